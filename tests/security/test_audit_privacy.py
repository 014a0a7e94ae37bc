"""The audit trail (who, when, what, on which object; readable and exportable by admins) and privacy."""
import csv
import io
import logging

from sqlalchemy import select

from core.services import services_of
from db.accounts import revoke_token
from db.models import Study
from tests.helpers import StubScreener, bearer, login
from tests.security.corpus import encode, film
from worker import pipeline

PATIENT = "DOE-JOHN-19570311-MRN4471"



def test_audit_trail_records_every_kind_of_event_and_exports_csv(app, users, caplog):
    caplog.set_level(logging.DEBUG)
    services, client = services_of(app), app.test_client()
    login(client, "admin", "admin-password")
    secret_pixels = encode(film(seed=21), "PNG")
    response = client.post("/api/v1/batches", headers=bearer(users["uploader"]), content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(secret_pixels), f"{PATIENT}.png"),
                                           (io.BytesIO(b"not an image"), f"{PATIENT}-notes.png")]})
    batch_id = response.get_json()["id"]
    with services.sessions() as session:
        study_id = session.scalar(select(Study.id).where(Study.batch_id == batch_id))
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), [study_id])  # NORMAL, flagged
    decided = client.post(f"/api/v1/studies/{study_id}/review", headers=bearer(users["reviewer"]),
                          json={"decision": "pneumonia", "note": "consolidation"})
    assert decided.status_code == 201
    with services.sessions.begin() as session:
        revoke_token(session, 1, actor_id=None)

    page = client.get("/admin/audit?kind=results")  # results apart from security events (the default tab)
    assert page.status_code == 200 and b"review.decision" in page.data
    export = client.get("/admin/audit.csv")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(export.data.decode())))
    by_action = {}
    for row in rows:
        by_action.setdefault(row["action"], []).append(row)
    for action, actor, object_type in (
            ("user.login", "admin", "user"), ("batch.upload", "uploader", "batch"), ("study.result", "", "study"),
            ("study.flag", "", "study"), ("review.decision", "reviewer", "study"), ("token.create", "uploader", "api_token"),
            ("token.revoke", "", "api_token")):
        assert action in by_action, f"{action} missing from the export"
        row = by_action[action][-1]
        assert row["actor"] == actor and row["object_type"] == object_type and row["at"], row
    assert by_action["review.decision"][0]["object_id"] == str(study_id)
    filtered = list(csv.DictReader(io.StringIO(client.get("/admin/audit.csv?action=token.").data.decode())))
    assert filtered and {row["action"] for row in filtered} <= {"token.create", "token.revoke"}

    # Privacy: no file names (they often carry patient identifiers) and no file contents in the logs.
    assert PATIENT not in caplog.text
    assert secret_pixels[16:48].hex() not in caplog.text and repr(secret_pixels[:64]) not in caplog.text


def test_csv_export_cannot_smuggle_spreadsheet_formulas(app, users):
    client = app.test_client()
    login(client, '=HYPERLINK("http://evil")', "whatever-password")
    login(client, "admin", "admin-password")
    text = client.get("/admin/audit.csv").data.decode()
    assert ",=HYPERLINK" not in text and "\"'{" not in text
    assert any(cell.startswith("'=") or "=HYPERLINK" in cell and not cell.startswith("=")
               for row in csv.reader(io.StringIO(text)) for cell in row)


def test_stored_files_are_not_reachable_without_authorization(app, users):
    services, client = services_of(app), app.test_client()
    response = client.post("/api/v1/batches", headers=bearer(users["uploader"]), content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(encode(film(seed=22), "PNG")), "x.png")]})
    with services.sessions() as session:
        study = session.scalar(select(Study).where(Study.batch_id == response.get_json()["id"]))
    pipeline.run_batch(services.sessions, services.storage,
                       pipeline.load_screener(services.settings), [study.id])
    key = study.storage_key
    for path in (f"/{key}", f"/studies/{key}", f"/static/../{key}", f"/static/..%2F..%2Fvar/studies/{key}",
                 f"/studies/{study.id}/../../{key}", f"/studies/{study.id}/original.png",
                 f"/var/studies/{key}"):
        answer = client.get(path, headers=bearer(users["uploader"]))
        assert answer.status_code == 404, (path, answer.status_code)
    assert client.get(f"/studies/{study.id}/view.png").status_code == 302  # anonymous: to the login page
    assert client.get(f"/studies/{study.id}/view.png", headers=bearer(users["uploader"])).status_code == 200
