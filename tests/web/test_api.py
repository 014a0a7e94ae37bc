"""The JSON API on the embedded broker: auth, uploads with bad files, review, health; both databases."""
import io

import numpy as np
import pytest
from sqlalchemy import select

from core.services import services_of
from db.models import AuditEvent, ReviewFlag, Study
from tests.helpers import bearer, chest_film, chest_films, png_bytes, zip_bytes
from worker import pipeline

API_ROUTES = [("get", "/api/v1/batches/1"), ("post", "/api/v1/batches"), ("get", "/api/v1/review"),
              ("post", "/api/v1/studies/1/review")]


@pytest.fixture
def client(app):
    return app.test_client()


def _upload(client, token, files: dict[str, bytes]):
    data = {"files": [(io.BytesIO(content), name) for name, content in files.items()]}
    return client.post("/api/v1/batches", data=data, headers=bearer(token),
                       content_type="multipart/form-data")


def _queued_messages(app) -> int:
    return len(list(services_of(app).settings.broker_dir.glob("*.msg")))


@pytest.mark.parametrize("method,path", API_ROUTES)
def test_api_needs_a_valid_token(client, users, method, path):
    assert getattr(client, method)(path).status_code == 401
    response = getattr(client, method)(path, headers=bearer("psk_not-a-real-token"))
    assert response.status_code == 401
    assert "Bearer" in response.get_json()["error"]


def test_roles_are_enforced(client, users):
    assert _upload(client, users["reviewer"], {"a.png": b"x"}).status_code == 403
    assert client.get("/api/v1/review", headers=bearer(users["uploader"])).status_code == 403
    assert client.get("/api/v1/review", headers=bearer(users["reviewer"])).status_code == 200


def test_upload_queues_good_files_and_names_each_bad_one(app, client, users):
    films = chest_films(normal=2)
    archive = zip_bytes({"a/one.png": png_bytes(np.zeros((40, 50), np.uint8)), "a/notes.txt": b"hello",
                         "__MACOSX/._one.png": b"junk"})
    response = _upload(client, users["uploader"], {**films, "scans.zip": archive, "empty.png": b"",
                                                   "fake.jpeg": b"MZ\x90\x00 executable"})

    assert response.status_code == 202
    body = response.get_json()
    assert body["total"] == 3 and body["status"] == "queued"
    assert {r["filename"]: r["error"] for r in body["rejected"]} == {
        "scans.zip/a/notes.txt": "not a PNG, JPEG or DICOM image", "empty.png": "empty file",
        "fake.jpeg": "not a PNG, JPEG or DICOM image"}
    assert _queued_messages(app) == 1  # 3 studies, batch size 4: one task
    batch = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()
    assert batch["status"] == "queued" and batch["done"] == 0
    assert sorted(s["filename"] for s in batch["studies"]) == sorted([*films, "scans.zip/a/one.png"])


def test_upload_of_only_bad_files_is_422_with_reasons(client, users):
    response = _upload(client, users["uploader"], {"x.png": b"\x89PNG\r\n\x1a\n truncated"})
    assert response.status_code == 422
    assert response.get_json()["rejected"][0]["error"] == "not a PNG, JPEG or DICOM image"


def test_upload_without_files_is_400(client, users):
    response = client.post("/api/v1/batches", headers=bearer(users["uploader"]))
    assert response.status_code == 400 and "files" in response.get_json()["error"]


def test_large_batches_are_split_into_tasks_of_batch_size(app, client, users):
    pixels = np.random.default_rng(1).integers(0, 255, (10, 32, 32), dtype=np.uint8)
    files = {f"f{i}.png": png_bytes(pixels[i]) for i in range(10)}
    assert _upload(client, users["uploader"], files).status_code == 202
    assert _queued_messages(app) == 3  # 10 studies in tasks of 4, 4, 2


def test_oversize_request_gets_413_with_a_message(app, client, users):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = _upload(client, users["uploader"], {"big.png": b"\0" * 5000})
    assert response.status_code == 413
    assert "upload limit" in response.get_json()["error"]


def test_review_flow_is_stored_audited_and_append_only(app, client, users, stub_screener):
    services = services_of(app)
    body = _upload(client, users["uploader"], chest_films(normal=2, pneumonia=1)).get_json()
    with services.sessions() as session:
        ids = dict(session.execute(select(Study.filename, Study.id).where(Study.batch_id == body["id"])).all())
    screener = pipeline.load_screener(services.settings)
    assert screener is stub_screener
    pipeline.run_batch(services.sessions, services.storage, screener, list(ids.values()))
    with services.sessions() as session:
        flags = dict(session.execute(select(ReviewFlag.study_id, ReviewFlag.reasons)).all())
        flag_events = session.scalars(select(AuditEvent.object_id).where(AuditEvent.action == "study.flag")).all()
    assert sorted(flag_events) == sorted(flags)
    # The stub calls the films without an opacity NORMAL near the threshold: those, and only those, are flagged.
    assert flags == {ids["normal-0.jpeg"]: ["near_threshold"], ids["normal-1.jpeg"]: ["near_threshold"]}
    flagged_id = ids["normal-0.jpeg"]

    queue = client.get("/api/v1/review", headers=bearer(users["reviewer"])).get_json()["items"]
    assert sorted(item["study_id"] for item in queue) == sorted(flags)
    probabilities = [item["probability"] for item in queue]
    assert probabilities == sorted(probabilities, reverse=True)

    bad = client.post(f"/api/v1/studies/{flagged_id}/review", json={"decision": "maybe"},
                      headers=bearer(users["reviewer"]))
    assert bad.status_code == 400 and "decision must be one of" in bad.get_json()["error"]
    for decision in ("normal", "pneumonia"):
        response = client.post(f"/api/v1/studies/{flagged_id}/review",
                               json={"decision": decision, "note": f"looks {decision}"},
                               headers=bearer(users["reviewer"]))
        assert response.status_code == 201 and response.get_json()["decision"] == decision

    queue = client.get("/api/v1/review", headers=bearer(users["reviewer"])).get_json()["items"]
    assert flagged_id not in [item["study_id"] for item in queue]
    with services.sessions() as session:
        flag = session.scalar(select(ReviewFlag).where(ReviewFlag.study_id == flagged_id))
        assert [r.decision for r in flag.reviews] == ["normal", "pneumonia"]
        assert flag.status == "closed"
        audits = session.scalars(select(AuditEvent).where(AuditEvent.action == "review.decision")).all()
        assert [a.detail["decision"] for a in audits] == ["normal", "pneumonia"]
        assert all(a.actor_id is not None and a.object_id == flagged_id for a in audits)
    batch = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()
    assert batch["status"] == "done"
    assert all(s["model_version"] == screener.version for s in batch["studies"])


def test_review_of_an_unflagged_study_is_409(app, client, users):
    body = _upload(client, users["uploader"], {"film.jpeg": chest_film()}).get_json()
    study_id = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()["studies"][0]["id"]
    response = client.post(f"/api/v1/studies/{study_id}/review", json={"decision": "normal"},
                           headers=bearer(users["reviewer"]))
    assert response.status_code == 409


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "broker": "ok", "workers_alive": 0,
                                   "studies_waiting": 0}


def test_healthz_is_503_when_the_database_is_unreachable(tmp_path, tiny_weights):
    from core.settings import Settings
    from pneumoscreen.app import create_app

    settings = Settings.from_env({"PNEUMOSCREEN_DATA_DIR": str(tmp_path), "SECRET_KEY": "x",
                                  "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                                  "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights)})
    response = create_app(settings=settings).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"].startswith("unavailable")


@pytest.mark.parametrize("in_department", [True, False])
def test_an_upload_takes_the_uploaders_department_from_the_request(app, client, in_department):
    """The request has the uploader (read with the token): the intake takes the department from there, one
    query an upload fewer (a PACS bridge sends films a few at a time), also for an uploader in no department."""
    from sqlalchemy import event

    from db.accounts import create_user, ensure_department, issue_token
    from db.models import Batch

    services = services_of(app)
    with services.sessions.begin() as session:
        department = ensure_department(session, "North").id if in_department else None
        token = issue_token(session, create_user(session, "north", "uploader", None, department_id=department))
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(" ".join(statement.split())))
    response = _upload(client, token, chest_films(normal=2))
    assert response.status_code == 202
    assert not [s for s in statements if s.startswith("SELECT") and " FROM users WHERE" in s]
    with services.sessions() as session:
        assert session.get(Batch, response.get_json()["id"]).department_id == department
