"""Faults with real processes: kill -9 a worker, restart Redis, restart PostgreSQL; nothing lost, nothing twice."""
import io
import time

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from core.services import services_of
from db.accounts import create_user, issue_token
from db.models import AuditEvent, Study
from tests.faults.conftest import counts
from tests.helpers import bearer, wait_until

STUDIES = 60


def _films(count: int, seed: int) -> list[tuple[str, bytes]]:
    """Distinct films (no two alike, so none is answered as a duplicate), big enough to take a while."""
    rng = np.random.default_rng(seed)
    films = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (384, 384), dtype=np.uint8)).save(buffer, format="PNG")
        films.append((f"film-{index:03d}.png", buffer.getvalue()))
    return films


def _upload(app, count: int, seed: int = 0) -> tuple[str, int, list[int]]:
    services = services_of(app)
    with services.sessions.begin() as session:
        token = issue_token(session, create_user(session, f"up{seed}", "uploader", None))
    response = app.test_client().post(
        "/api/v1/batches", headers=bearer(token), content_type="multipart/form-data",
        data={"files": [(io.BytesIO(data), name) for name, data in _films(count, seed)]})
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch_id)).all()
    assert len(ids) == count
    return token, batch_id, list(ids)


def _all_finished(services, ids):
    current = counts(services, ids)
    return current if current["done"] + current["error"] == len(ids) else None


def _result_events(services, ids) -> int:
    with services.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "study.result", AuditEvent.object_id.in_(ids)))


def _assert_exactly_once(services, ids, final, label, capsys, extra=""):
    events = _result_events(services, ids)
    assert final == {"done": len(ids), "error": 0, "queued": 0, "running": 0, "predictions": len(ids)}, final
    assert events == len(ids), f"{events} result events for {len(ids)} studies"
    with capsys.disabled():
        print(f"\n[faults] {label}: submitted {len(ids)}, finished {final['done']}, lost 0, "
              f"duplicated {events - len(ids)}{extra}")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_worker_killed_mid_batch_loses_nothing(database_url, own_redis, stack, capsys):
    # The shipped time limits: only the dead worker's heartbeat can bring its batch back this soon.
    app, worker = stack(database_url, own_redis.url, PNEUMOSCREEN_SWEEP_INTERVAL_S="60",
                        PNEUMOSCREEN_STALE_RUNNING_S="600", PNEUMOSCREEN_HEARTBEAT_S="5")
    services = services_of(app)
    _, _, ids = _upload(app, STUDIES)
    worker.start()
    at_kill = wait_until(lambda: (c := counts(services, ids))["done"] >= 4 and c["running"] > 0 and c,
                         "results, with a batch in flight", timeout=150)
    worker.kill()
    killed_at = time.monotonic()
    with services.sessions() as session:
        held = session.scalars(select(Study.id).where(Study.id.in_(ids), Study.status == "running")).all()
    assert held and at_kill["done"] < len(ids)

    worker.start()  # a fresh worker; its sweeper re-sends the batch the dead one held
    wait_until(lambda: counts(services, held)["done"] == len(held), "the killed worker's studies", timeout=150,
               every=0.25)
    recovery_s = time.monotonic() - killed_at
    final = wait_until(lambda: _all_finished(services, ids), "every study to finish", timeout=150, every=0.5)

    _assert_exactly_once(services, ids, final, "worker kill -9", capsys,
                         f" (killed with {at_kill['done']} done, {len(held)} running; those done "
                         f"{recovery_s:.1f} s after the kill)")
    assert recovery_s < 90, f"the killed worker's studies took {recovery_s:.0f} s to finish"
    with services.sessions() as session:
        attempts = session.scalars(select(Study.attempts).where(Study.id.in_(ids))).all()
    assert max(attempts) == 2, "the batch in flight was claimed again after the kill"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_redis_restart_loses_no_study(database_url, own_redis, stack, capsys):
    app, worker = stack(database_url, own_redis.url)
    services = services_of(app)
    _, _, ids = _upload(app, STUDIES, seed=1)
    worker.start()
    at_stop = wait_until(lambda: (c := counts(services, ids))["done"] >= 4 and c["queued"] > 0 and c,
                         "first results", timeout=150)
    own_redis.stop()  # keeps nothing on disk: every queued message is gone
    time.sleep(1)
    own_redis.start()

    final = wait_until(lambda: _all_finished(services, ids), "every study to finish", timeout=150, every=0.5)

    _assert_exactly_once(services, ids, final, "Redis restart", capsys,
                         f" ({at_stop['queued']} queued messages lost with Redis, re-queued by the sweeper)")


def test_postgres_restart_answers_503_then_finishes(own_postgres, own_redis, stack, capsys):
    app, worker = stack(own_postgres.url, own_redis.url)
    services = services_of(app)
    client = app.test_client()
    token, batch_id, ids = _upload(app, 40, seed=2)
    worker.start()
    wait_until(lambda: counts(services, ids)["done"] >= 4, "first results", timeout=150)
    own_postgres.stop()

    down = client.get(f"/api/v1/batches/{batch_id}", headers=bearer(token))
    assert down.status_code == 503 and "database is unavailable" in down.get_json()["error"]
    assert client.get("/batches", headers=bearer(token)).status_code == 503
    assert client.get("/healthz").status_code == 503
    time.sleep(3)  # the worker meets the outage: its tasks fail and are retried
    own_postgres.start()

    final = wait_until(lambda: _all_finished(services, ids), "every study to finish", timeout=150, every=0.5)
    _assert_exactly_once(services, ids, final, "PostgreSQL restart", capsys, " (portal answered 503 meanwhile)")
    assert client.get(f"/api/v1/batches/{batch_id}", headers=bearer(token)).status_code == 200
