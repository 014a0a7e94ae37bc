"""The outbound queue: departments' destinations checked strictly, one message per kind and result version, older
pending versions superseded, and sending a failed message again."""
import pytest
from sqlalchemy import func, select

from db import counters
from db.models import AuditEvent, Department, OutboundMessage, OutboundState, StudyResult
from db.session import make_engine, make_session_factory
from studies.outbound import check_config, destinations, queue_many, retry, set_config, shown

EVERYTHING = {"dicom": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104, "send": ["sr", "sc"]},
              "hl7": {"host": "ris.local", "port": 2575, "receiving_application": "RIS", "receiving_facility": "HOSP"},
              "fhir": {"url": "https://fhir.example/fhir", "token": "s3cret"}}


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def make_result(session, config=EVERYTHING, **columns) -> StudyResult:
    department = Department(name=f"Radiology {session.scalar(select(func.count(Department.id)))}",
                            outbound=check_config(config))
    session.add(department)
    session.flush()
    values = {"department_id": department.id, "study_instance_uid": "1.2.3.4", "accession_number": "ACC1",
              "scope": "in_scope", "call": "PNEUMONIA", "probability": 0.9, "threshold": 0.5,
              "decided_by_image_id": 1, "model_version": "ensemble-1", "status": "final", "version": 1} | columns
    result = StudyResult(**values)
    session.add(result)
    session.flush()
    return result


def messages_of(session, result_id: int, *columns) -> list[tuple]:
    """These columns of a result's outbound messages, oldest first, as the database holds them."""
    rows = session.execute(select(*columns).where(OutboundMessage.study_result_id == result_id)
                           .order_by(OutboundMessage.id))
    return [tuple(row) for row in rows]


def test_a_full_configuration_is_kept_and_described():
    config = check_config(EVERYTHING)
    assert config == EVERYTHING
    assert destinations(config) == {"sr": "PACS@10.0.0.5:104", "sc": "PACS@10.0.0.5:104",
                                    "hl7": "mllp://ris.local:2575", "fhir": "https://fhir.example/fhir"}
    assert shown(config)["fhir"]["token"] == "(set)" and "s3cret" not in repr(shown(config))
    assert check_config({}) is None and check_config(None) is None
    assert check_config({"dicom": {"ae_title": " PACS ", "host": "::1", "port": 11112}})["dicom"] == \
        {"ae_title": "PACS", "host": "::1", "port": 11112, "send": ["sr", "sc"]}
    assert destinations(check_config({"dicom": {"ae_title": "A", "host": "::1", "port": 1, "send": ["sc"]}})) == \
        {"sc": "A@[::1]:1"}


@pytest.mark.parametrize("config, complaint", [
    ({"dicom": {"ae_title": "A" * 17, "host": "pacs", "port": 104}}, "AE title"),
    ({"dicom": {"ae_title": "", "host": "pacs", "port": 104}}, "AE title"),
    ({"dicom": {"ae_title": "PA\\CS", "host": "pacs", "port": 104}}, "AE title"),
    ({"dicom": {"ae_title": "PACS\x00", "host": "pacs", "port": 104}}, "AE title"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs;rm -rf", "port": 104}}, "host"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs", "port": 0}}, "port"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs", "port": 65536}}, "port"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs", "port": "104"}}, "port"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs", "port": 104, "send": ["sr", "sr"]}}, "send"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs", "port": 104, "send": ["pdf"]}}, "send"),
    ({"dicom": {"ae_title": "PACS", "host": "pacs", "port": 104, "send": []}}, "send"),
    ({"hl7": {"host": "-ris", "port": 2575}}, "host"),
    ({"hl7": {"host": "a" * 64 + ".org", "port": 2575}}, "host"),
    ({"hl7": {"host": "ris", "port": 2575, "receiving_application": "RIS|X"}}, "receiving_application"),
    ({"hl7": {"host": "ris", "port": 2575, "receiving_facility": "H^OSP"}}, "receiving_facility"),
    ({"fhir": {"url": "ftp://fhir.example/"}}, "FHIR URL"),
    ({"fhir": {"url": "javascript:alert(1)"}}, "FHIR URL"),
    ({"fhir": {"url": "https://user:pw@fhir.example/"}}, "FHIR URL"),
    ({"fhir": {"url": "https://fhir.example/fhir?x=1"}}, "FHIR URL"),
    ({"fhir": {"url": "https://fhir.example:99999/"}}, "FHIR URL"),
    ({"fhir": {"url": "https://fhir example/"}}, "FHIR URL"),
    ({"fhir": {"url": "https://fhir.example/", "token": "a b"}}, "token"),
    ({"fhir": {"url": "https://fhir.example/", "token": "abc\r\nX-Evil: 1"}}, "token"),
    ({"smtp": {"host": "mail"}}, "unknown"),
    ({"hl7": {"host": "ris", "port": 2575, "extra": 1}}, "unknown"),
    ({"hl7": "ris:2575"}, "object"),
])
def test_hostile_configurations_are_refused_with_the_reason(config, complaint):
    with pytest.raises(ValueError, match=complaint):
        check_config(config)


def test_one_message_per_kind_and_version_never_twice(sessions):
    with sessions.begin() as session:
        result = make_result(session)
        first = queue_many(session, [result])
        assert sorted(m.kind for m in first) == ["fhir", "hl7", "sc", "sr"]
        assert all(m.state == OutboundState.PENDING and m.result_version == 1 and m.attempts == 0 for m in first)
        assert queue_many(session, [result]) == []  # the same version again: nothing new
        result_id = result.id
    with sessions.begin() as session:
        assert session.scalar(select(func.count(OutboundMessage.id))) == 4
        assert session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "outbound.queued")) == 4
        hl7 = session.scalars(select(OutboundMessage).where(OutboundMessage.kind == "hl7")).one()
        assert hl7.destination == "mllp://ris.local:2575"
        assert messages_of(session, result_id, OutboundMessage.kind, OutboundMessage.id) == \
            [(kind, next(m.id for m in first if m.kind == kind)) for kind in ("sr", "sc", "hl7", "fhir")]


def test_the_constraint_settles_a_race_the_check_missed(sessions, monkeypatch):
    """Two refreshes of one result at once: the second one's check saw nothing, its inserts do nothing."""
    from studies import outbound

    with sessions.begin() as session:
        result_id = make_result(session).id
    with sessions.begin() as session:
        queue_many(session, [session.get(StudyResult, result_id)])
    monkeypatch.setattr(outbound, "_queued", lambda session, result_ids: set())
    with sessions.begin() as session:
        assert queue_many(session, [session.get(StudyResult, result_id)]) == []
        assert session.scalar(select(func.count(OutboundMessage.id))) == 4


@pytest.mark.parametrize("status, queued", [("registered", False), ("preliminary", True), ("final", True),
                                            ("amended", True), ("corrected", True), ("cancelled", True)])
def test_queued_for_every_status_but_registered(sessions, status, queued):
    with sessions.begin() as session:
        assert bool(queue_many(session, [make_result(session, status=status)])) is queued


def test_nothing_without_a_department_or_destinations_and_no_dicom_without_a_study(sessions):
    with sessions.begin() as session:
        assert queue_many(session, [make_result(session, config=None)]) == []
        orphan = make_result(session)
        orphan.department_id = None
        assert queue_many(session, [orphan]) == []
        png = make_result(session, study_instance_uid=None)
        assert sorted(m.kind for m in queue_many(session, [png])) == ["fhir", "hl7"]
        out_of_scope = make_result(session, scope="out_of_scope", call=None, probability=None,
                                   decided_by_image_id=None)
        assert sorted(m.kind for m in queue_many(session, [out_of_scope])) == ["fhir", "hl7", "sr"]


def test_a_newer_version_supersedes_what_is_still_pending_but_not_what_went(sessions):
    with sessions.begin() as session:
        result = make_result(session, status="preliminary", config={"hl7": EVERYTHING["hl7"],
                                                                     "fhir": EVERYTHING["fhir"]})
        hl7_v1, fhir_v1 = sorted(queue_many(session, [result]), key=lambda m: m.kind, reverse=True)
        hl7_v1.state = OutboundState.SENT  # the preliminary report reached the RIS, not the FHIR server
        result.version, result.status = 2, "final"
        queue_many(session, [result])
        session.flush()
        session.refresh(fhir_v1)
        assert fhir_v1.state == OutboundState.SUPERSEDED and hl7_v1.state == OutboundState.SENT
        result.version, result.status = 3, "corrected"  # the final report was sent: its correction follows
        session.execute(OutboundMessage.__table__.update().where(OutboundMessage.result_version == 2)
                        .values(state=OutboundState.SENT))
        newest = queue_many(session, [result])
        assert sorted((m.kind, m.result_version, m.state) for m in newest) == [
            ("fhir", 3, "pending"), ("hl7", 3, "pending")]
        columns = (OutboundMessage.kind, OutboundMessage.result_version, OutboundMessage.state)
        assert messages_of(session, result.id, *columns) == [
            ("hl7", 1, "sent"), ("fhir", 1, "superseded"), ("hl7", 2, "sent"), ("fhir", 2, "sent"),
            ("hl7", 3, "pending"), ("fhir", 3, "pending")]
        assert messages_of(session, 999, *columns) == []
        assert session.scalar(select(func.count(AuditEvent.id))
                              .where(AuditEvent.action == "outbound.superseded")) == 1


def test_retry_sends_a_failed_message_again_with_fresh_attempts(sessions):
    with sessions.begin() as session:
        result = make_result(session, config={"hl7": EVERYTHING["hl7"]})
        message = queue_many(session, [result])[0]
        with pytest.raises(ValueError, match="only failed"):
            retry(session, message.id, None, "test")
        message.state, message.attempts, message.last_error = OutboundState.FAILED, 8, "refused"
        session.flush()
        again = retry(session, message.id, None, "test")
        assert (again.state, again.attempts, again.last_error) == ("pending", 0, "refused")
        kept = [(labels, value) for name, labels, value in counters.read_all(session)
                if name == "pneumoscreen_outbound_attempts_total"]
        assert kept == [({"kind": "hl7"}, 8)]  # /metrics still counts the 8 attempts the reset forgot
        with pytest.raises(LookupError):
            retry(session, 12345, None, "test")
        message.state = OutboundState.FAILED
        result.version = 2  # the result moved on: that version's message is the one to send
        session.flush()
        with pytest.raises(ValueError, match="now at version 2"):
            retry(session, message.id, None, "test")


def test_set_config_is_audited_without_the_token(sessions):
    with sessions.begin() as session:
        department = Department(name="Radiology")
        session.add(department)
        session.flush()
        set_config(session, department, EVERYTHING, None, "cli:test")
        with pytest.raises(ValueError):
            set_config(session, department, {"fhir": {"url": "gopher://x"}}, None, "cli:test")
        assert department.outbound["fhir"]["token"] == "s3cret"
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "department.outbound")).one()
        assert event.detail["outbound"]["fhir"]["token"] == "(set)" and "s3cret" not in str(event.detail)


def test_a_batch_of_results_is_queued_in_a_few_statements(sessions):
    """A worker batch refreshes up to 32 results at once. Queued one result at a time, a batch of 32 films for a
    department with two destinations took 267 statements; now the queue's own do not grow with the results (the
    old code made 96 here), and each result gets its own messages, superseding only its own older pending ones."""
    from sqlalchemy import event

    with sessions.begin() as session:
        ids = [make_result(session, accession_number=f"A{i}").id for i in range(12)]
        queue_many(session, [session.get(StudyResult, result_id) for result_id in ids[:4]])  # version 1 pending
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(sessions.kw["bind"], "before_cursor_execute", count)
    with sessions.begin() as session:
        results = [session.get(StudyResult, result_id) for result_id in ids]
        for result in results[:4]:
            result.version, result.status = 2, "amended"
        session.flush()
        statements.clear()
        queued = queue_many(session, results)
    event.remove(sessions.kw["bind"], "before_cursor_execute", count)
    # The audit rows go with the transaction's flush (one insert on PostgreSQL, one a row on SQLite, as any).
    queue_statements = [s for s in statements if "outbound_messages" in s or "FROM departments" in s]
    assert len(queue_statements) <= 5, [s[:60] for s in queue_statements]
    assert sorted((m.study_result_id, m.kind) for m in queued) == \
        sorted((result_id, kind) for result_id in ids for kind in ("sr", "sc", "hl7", "fhir"))
    with sessions() as session:
        for result_id in ids:
            rows = messages_of(session, result_id, OutboundMessage.result_version, OutboundMessage.state)
            expected = [(1, "superseded")] * 4 + [(2, "pending")] * 4 if result_id in ids[:4] else [(1, "pending")] * 4
            assert rows == expected, (result_id, rows)
        superseded = session.scalars(select(AuditEvent).where(AuditEvent.action == "outbound.superseded")).all()
        assert len(superseded) == 16 and {row.detail["by_version"] for row in superseded} == {2}
        assert session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "outbound.queued")) == 64
