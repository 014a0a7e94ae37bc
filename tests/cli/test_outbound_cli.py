"""`pneumoscreen departments outbound` (where results go, checked and audited) and `pneumoscreen outbound
list|retry`, on SQLite and PostgreSQL."""
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db.accounts import ensure_department
from db.models import AuditEvent, Department, OutboundMessage, StudyResult
from db.session import one_off_session
from pneumoscreen.cli import main


@pytest.fixture
def env(tmp_path, database_url) -> dict[str, str]:
    with one_off_session(database_url, write=True) as session:
        ensure_department(session, "Radiology")
    return {"PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": database_url}


def run(env, *args):
    return CliRunner().invoke(main, list(args), env=env)


def outbound_of(env) -> dict | None:
    with one_off_session(env["DATABASE_URL"]) as session:
        return session.scalar(select(Department.outbound).where(Department.name == "Radiology"))


def test_set_show_and_clear_a_departments_destinations(env, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")

    done = run(env, "departments", "outbound", "Radiology", "--dicom", "PACS@10.0.0.5:104", "--dicom-send", "sr",
               "--hl7", "ris.local:2575", "--hl7-facility", "HOSP", "--fhir", "https://fhir.example/fhir/",
               "--fhir-token-file", str(token))

    assert done.exit_code == 0, done.output
    assert "PACS@10.0.0.5:104 (C-STORE of sr)" in done.output and "mllp://ris.local:2575" in done.output
    assert "bearer token set" in done.output and "s3cret" not in done.output
    assert outbound_of(env) == {
        "dicom": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104, "send": ["sr"]},
        "hl7": {"host": "ris.local", "port": 2575, "receiving_application": "RIS", "receiving_facility": "HOSP"},
        "fhir": {"url": "https://fhir.example/fhir", "token": "s3cret-token"}}
    shown = run(env, "departments", "outbound", "Radiology")
    assert shown.exit_code == 0 and shown.output == done.output
    changed = run(env, "departments", "outbound", "Radiology", "--dicom-send", "sr,sc")
    assert "C-STORE of sr, sc" in changed.output and outbound_of(env)["hl7"]["host"] == "ris.local"

    cleared = run(env, "departments", "outbound", "Radiology", "--clear")
    assert cleared.exit_code == 0 and "no destinations" in cleared.output and outbound_of(env) is None
    with one_off_session(env["DATABASE_URL"]) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "department.outbound")).all()
    assert len(events) == 3 and all("s3cret" not in str(event.detail) for event in events)
    assert events[0].detail["outbound"]["fhir"]["token"] == "(set)" and events[0].detail["by"].startswith("cli:")


@pytest.mark.parametrize("args, complaint", [
    (["--dicom", "PACS@pacs;reboot:104"], "host must be"),
    (["--dicom", "PACS:104"], "AE@host:port"),
    (["--dicom", "WAY-TOO-LONG-AE-TITLE@pacs:104"], "AE title"),
    (["--hl7", "ris:70000"], "port must be"),
    (["--hl7", "ris:²"], "host:port"),
    (["--fhir", "file:///etc/passwd"], "FHIR URL"),
    (["--fhir", "https://fhir.example/?a=b"], "FHIR URL"),
    (["--dicom-send", "sr"], "no dicom destination"),
])
def test_hostile_values_are_refused_and_nothing_changes(env, args, complaint):
    run(env, "departments", "outbound", "Radiology", "--hl7", "ris.local:2575")
    before = outbound_of(env)

    refused = run(env, "departments", "outbound", "Radiology", *args)

    assert refused.exit_code != 0 and complaint in refused.output, refused.output
    assert outbound_of(env) == before


def test_an_unknown_department_is_named(env):
    refused = run(env, "departments", "outbound", "Nowhere", "--hl7", "ris.local:2575")
    assert refused.exit_code != 0 and "no department 'Nowhere'" in refused.output


def test_list_and_retry_a_failed_message(env):
    with one_off_session(env["DATABASE_URL"], write=True) as session:
        result = StudyResult(department_id=session.scalar(select(Department.id)), status="final", version=1)
        session.add(result)
        session.flush()
        message = OutboundMessage(study_result_id=result.id, kind="hl7", result_version=1,
                                  destination="mllp://ris.local:2575", state="failed", attempts=8,
                                  last_error="AckError: the RIS answered 'AE'")
        session.add(message)
        session.flush()
        message_id = message.id

    listed = run(env, "outbound", "list", "--state", "failed")
    assert listed.exit_code == 0, listed.output
    assert f"{message_id:>7}  failed" in listed.output and "answered 'AE'" in listed.output
    assert run(env, "outbound", "list", "--state", "sent").output == ""

    again = run(env, "outbound", "retry", str(message_id))
    assert again.exit_code == 0 and "queued again" in again.output, again.output
    with one_off_session(env["DATABASE_URL"]) as session:
        assert session.get(OutboundMessage, message_id).state == "pending"
        assert session.get(OutboundMessage, message_id).attempts == 0
        assert session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "outbound.retry"))["by"] \
            .startswith("cli:")
    twice = run(env, "outbound", "retry", str(message_id))
    assert twice.exit_code != 0 and "only failed messages" in twice.output
    missing = run(env, "outbound", "retry", "999999")
    assert missing.exit_code != 0 and "no outbound message 999999" in missing.output
