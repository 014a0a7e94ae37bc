"""An admin proposes a department's operating point from a labelled zip in the portal; a real Celery worker
screens it; the admin sees the proposal and its ROC curve, accepts it, and can roll back."""
import io
import time

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user
from db.models import AuditEvent, SiteCalibration
from tests.helpers import chest_films, csrf, login, zip_bytes


def _sample(normal: int, pneumonia: int, seed: int) -> bytes:
    films = chest_films(normal, pneumonia, seed=seed)
    return zip_bytes({f"sample/{'PNEUMONIA' if name.startswith('pneumonia') else 'NORMAL'}/{name}": data
                      for name, data in films.items()} | {"sample/README.txt": b"labels by folder"})


def _propose(client, department: str, archive: bytes, miss_rate: str = "0.05"):
    page = client.get("/admin/calibration")
    return client.post("/admin/calibration", data={
        "csrf_token": csrf(page.data), "department": department, "miss_rate": miss_rate,
        "sample": (io.BytesIO(archive), "sample.zip")}, content_type="multipart/form-data")


def _wait(sessions, predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            if found := predicate(session):
                return found
        time.sleep(0.5)
    raise AssertionError("the worker did not answer in time")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_propose_accept_and_roll_back_from_the_portal(redis_app):
    services = services_of(redis_app)
    with services.sessions.begin() as session:
        create_user(session, "chief", "admin", "chief-password")
    client = redis_app.test_client()
    login(client, "chief", "chief-password")

    with start_worker(services.celery, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        assert _propose(client, "Radiology North", _sample(25, 25, seed=0)).status_code == 302
        first = _wait(services.sessions, lambda s: s.scalar(select(SiteCalibration).where(
            SiteCalibration.version == 1)))
        # Too few pneumonia films for a 2% target: the page says why, nothing is stored.
        assert _propose(client, "Radiology North", _sample(5, 5, seed=100), miss_rate="0.02").status_code == 302
        _wait(services.sessions, lambda s: s.scalar(select(AuditEvent).where(
            AuditEvent.action == "calibration.failed")))
        assert _propose(client, "Radiology North", _sample(25, 25, seed=200)).status_code == 302
        second = _wait(services.sessions, lambda s: s.scalar(select(SiteCalibration).where(
            SiteCalibration.version == 2)))

    assert not first.active and first.accepted_at is None and (first.n_normal, first.n_pneumonia) == (25, 25)
    page = client.get("/admin/calibration").get_data(as_text=True)
    assert page.count(">proposal<") == 2 and "needs at least 49 pneumonia films" in page
    assert client.get(f"/admin/calibration/{first.id}/roc.png").data[:4] == b"\x89PNG"

    def act(record_id: int):
        token = csrf(client.get("/admin/calibration").data)
        return client.post(f"/admin/calibration/{record_id}/activate", data={"csrf_token": token})

    assert act(second.id).status_code == 302 and act(first.id).status_code == 302  # accept both, v1 last
    assert act(second.id).status_code == 302  # and roll forward again
    with services.sessions() as session:
        rows = {row.version: row for row in session.scalars(select(SiteCalibration))}
        assert rows[2].active and not rows[1].active and rows[1].accepted_at and rows[2].accepted_at
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.action.startswith("calibration."))
                                  .order_by(AuditEvent.id)).all()
    assert actions.count("calibration.request") == 3 and actions.count("calibration.accept") == 2
    assert actions.count("calibration.activate") == 1 and actions.count("calibration.failed") == 1
    page = client.get("/admin/calibration").get_data(as_text=True)
    assert ">active<" in page and ">earlier<" in page and "Roll back to this" in page
