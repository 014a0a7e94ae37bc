"""End to end on real services: PostgreSQL, Redis as the broker, a real Celery worker."""
import io
import time

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from core.services import services_of
from db.models import AuditEvent, Prediction, Study
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import bearer, chest_films
from tests.security.corpus import png_with_corrupt_pixels


def _wait_for_batch(client, token, batch_id, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get(f"/api/v1/batches/{batch_id}", headers=bearer(token)).get_json()
        if batch["status"] == "done":
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not done after {timeout} s: {batch}")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_upload_screen_review_on_postgres_and_redis(redis_app, users_on):
    app, tokens = redis_app, users_on(redis_app)
    services = services_of(app)
    client = app.test_client()
    films = chest_films(normal=5, pneumonia=4)
    films["lateral.dcm"] = to_bytes(dataset(chest_pixels(), view="LL"))  # out_of_scope whatever the model says
    upload = {"files": [(io.BytesIO(data), name) for name, data in films.items()]
              # Passes the door (a truncated file would not: tests/security) but cannot be decoded.
              + [(io.BytesIO(png_with_corrupt_pixels()), "broken.jpeg")]}

    with start_worker(services.celery, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        response = client.post("/api/v1/batches", data=upload, headers=bearer(tokens["uploader"]))
        assert response.status_code == 202, response.get_json()
        body = response.get_json()
        assert body["total"] == 11 and body["rejected"] == []
        batch = _wait_for_batch(client, tokens["uploader"], body["id"])

    assert batch["done"] == 10 and batch["failed"] == 1
    broken = next(s for s in batch["studies"] if s["filename"] == "broken.jpeg")
    assert broken["status"] == "error" and broken["error"]
    with services.sessions() as session:
        rows = session.execute(select(Study, Prediction).join(Prediction)
                               .where(Study.batch_id == body["id"])).all()
        assert len(rows) == 10
        for study, prediction in rows:
            assert study.status == "done" and study.attempts == 1
            assert prediction.model_version == "0.0.0+tiny" and prediction.model_name == "tiny-cnn"
            assert 0 <= prediction.probability <= 1 and prediction.prediction in ("NORMAL", "PNEUMONIA")
    flagged = [s for s in batch["studies"] if s["flagged"]]
    lateral = next(s["id"] for s in batch["studies"] if s["filename"] == "lateral.dcm")
    assert lateral in {s["id"] for s in flagged}
    with services.sessions() as session:
        assert session.get(Study, lateral).flag.reasons == ["out_of_scope"]

    queue = client.get("/api/v1/review", headers=bearer(tokens["reviewer"])).get_json()["items"]
    assert {item["study_id"] for item in queue} == {s["id"] for s in flagged}
    target = queue[0]["study_id"]
    response = client.post(f"/api/v1/studies/{target}/review", headers=bearer(tokens["reviewer"]),
                           json={"decision": "pneumonia", "note": "right lower lobe opacity"})
    assert response.status_code == 201
    with services.sessions() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "review.decision"))
        assert event.object_id == target and event.detail["decision"] == "pneumonia"
        reviewed = session.get(Study, target)
        assert reviewed.flag.status == "closed" and reviewed.flag.latest.note == "right lower lobe opacity"


@pytest.fixture
def users_on():
    from db.accounts import create_user, issue_token

    def make(app) -> dict[str, str]:
        with services_of(app).sessions.begin() as session:
            return {role: issue_token(session, create_user(session, role, role, f"{role}-password"))
                    for role in ("uploader", "reviewer")}
    return make
