"""Worker heartbeats: rows, claims that name their worker, the sweeper judging by heartbeat, /healthz."""
import os
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.services import services_of
from db.models import Study, User, Worker, utcnow
from studies.files import Item
from studies.intake import submit_batch
from tests.helpers import chest_film
from worker import heartbeat, pipeline
from worker.sweeper import requeue_orphaned, requeue_stale


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a process that has not heartbeat yet."""
    monkeypatch.setattr(heartbeat, "_registered", {})
    monkeypatch.setattr(heartbeat, "_stops", {})


def _studies(services, count: int, seed: int = 40) -> list[int]:
    with services.sessions() as session:
        user_id = session.scalar(select(User.id).where(User.username == "uploader"))
    batch, _ = submit_batch(services, [Item(f"{i}.jpeg", chest_film(seed=seed + i)) for i in range(count)],
                            user_id, "api")
    with services.sessions() as session:
        return list(session.scalars(select(Study.id).where(Study.batch_id == batch.id).order_by(Study.id)))


def _worker(services, silent_for_s: int) -> int:
    with services.sessions.begin() as session:
        worker = Worker(name="elsewhere:1", heartbeat_at=utcnow() - timedelta(seconds=silent_for_s))
        session.add(worker)
        session.flush()
        return worker.id


def _running(services, ids, claimed_by, started_s_ago: int = 0) -> None:
    with services.sessions.begin() as session:
        session.execute(update(Study).where(Study.id.in_(ids)).values(
            status="running", claimed_by=claimed_by, started_at=utcnow() - timedelta(seconds=started_s_ago)))


def _statuses(services, ids) -> list[str]:
    with services.sessions() as session:
        return list(session.scalars(select(Study.status).where(Study.id.in_(ids)).order_by(Study.id)))


def test_heartbeat_registers_once_and_claims_carry_the_worker(app, users):
    services = services_of(app)
    assert heartbeat.current_worker_id() is None
    stop = heartbeat.start_heartbeat(services)
    try:
        worker_id = heartbeat.current_worker_id()
        assert worker_id is not None and heartbeat.start_heartbeat(services) is stop  # once per process
        with services.sessions() as session:
            first = session.get(Worker, worker_id)
        assert heartbeat.beat(services.sessions) == worker_id
        with services.sessions() as session:
            rows = session.scalars(select(Worker)).all()
        assert [row.id for row in rows] == [worker_id] and rows[0].heartbeat_at > first.heartbeat_at
        assert rows[0].name.endswith(f":{os.getpid()}")

        ids = _studies(services, 3)
        claims = pipeline._claim(services.sessions, ids, 0.0, 0, 5)
        assert [claim.study_id for claim in claims] == ids
        with services.sessions() as session:
            assert set(session.scalars(select(Study.claimed_by).where(Study.id.in_(ids)))) == {worker_id}
    finally:
        stop.set()


def test_sweeper_sends_a_dead_workers_studies_by_heartbeat_not_age(app, users):
    services = services_of(app)
    ids = _studies(services, 6)
    dead, alive = _worker(services, 60), _worker(services, 1)
    _running(services, ids[:2], dead)          # claimed a moment ago, by a worker that went silent
    _running(services, ids[2:3], alive)
    _running(services, ids[3:4], None)         # claimed by a process without a heartbeat
    _running(services, ids[4:5], 10**6)        # by a worker whose row was pruned

    assert requeue_orphaned(services) == 2
    assert _statuses(services, ids[:5]) == ["queued", "queued", "running", "running", "running"]
    assert requeue_orphaned(services) == 0  # sent once
    assert requeue_stale(services, 600, 600) == 0  # the rest is young: the time limit has not come

    # Unknown workers (and a live one that hangs) still fall under the time limit.
    _running(services, ids[2:5], None, started_s_ago=3600)
    _running(services, ids[2:3], alive, started_s_ago=3600)
    _running(services, ids[4:5], 10**6, started_s_ago=3600)
    assert requeue_stale(services, 600, 600) == 3
    with services.sessions() as session:
        assert set(session.scalars(select(Study.claimed_by).where(Study.id.in_(ids[:5])))) == {None}


def test_sweeper_prunes_workers_silent_for_a_day(app):
    services = services_of(app)
    _worker(services, 2 * 86_400)
    recent = _worker(services, 60)
    requeue_stale(services)
    with services.sessions() as session:
        assert session.scalars(select(Worker.id)).all() == [recent]  # not the silent one


def test_healthz_counts_workers_and_says_when_studies_wait_without_one(app, users):
    services = services_of(app)
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok", "broker": "ok",
                                                 "workers_alive": 0, "studies_waiting": 0}
    _studies(services, 2)
    _worker(services, 60)  # dead: does not count
    response = client.get("/healthz")
    body = response.get_json()
    assert response.status_code == 200  # the portal itself is fine
    assert body["status"] == "degraded" and body["workers_alive"] == 0 and body["studies_waiting"] == 2
    assert "no worker is alive" in body["message"]

    heartbeat.beat(services.sessions)
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["workers_alive"] == 1 and "message" not in body


def test_a_claim_leaves_studies_a_live_worker_runs_and_takes_back_a_dead_ones(app, users):
    """A study another live worker took into its batch is not screened twice when its own message arrives."""
    services = services_of(app)
    ids = _studies(services, 5)
    dead, alive = _worker(services, 60), _worker(services, 1)
    _running(services, ids[:1], alive)
    _running(services, ids[1:2], dead)
    _running(services, ids[2:3], None)  # a process without a heartbeat
    claims = pipeline._claim(services.sessions, ids, 0.0, 0, 5)
    assert [claim.study_id for claim in claims] == ids[1:]
    with services.sessions() as session:
        assert session.get(Study, ids[0]).claimed_by == alive


def test_dynamic_batching_fills_a_batch_with_other_uploads_oldest_first(app, users, stub_screener):
    """Four small uploads, one task message each: the first task screens all of them in one model batch and
    the later messages find their studies done."""
    services = services_of(app)
    uploads = [_studies(services, 2, seed=100 + 10 * n) for n in range(4)]
    with services.sessions.begin() as session:  # a copy waiting on its original is not taken
        session.execute(update(Study).where(Study.id == uploads[3][1]).values(duplicate_of_id=uploads[0][0]))
    counts = pipeline.run_batch(services.sessions, services.storage, stub_screener, uploads[1], fill_to=6)
    assert counts["done"] == 6 and stub_screener.images == 6
    # Its own two, then the oldest others: the first upload, the third; the fourth's first film waits, and its
    # second is answered from its original (in the first upload) without running the models.
    assert _statuses(services, [i for upload in uploads for i in upload]) == ["done"] * 6 + ["queued", "done"]
    assert pipeline.run_batch(services.sessions, services.storage, stub_screener, uploads[2]) == \
        {"done": 0, "error": 0, "skipped": 0}  # the third upload's own message: already done
    assert pipeline.run_batch(services.sessions, services.storage, stub_screener, uploads[3][:1],
                              fill_to=6)["done"] == 1
    assert stub_screener.images == 7  # nothing screened twice
    # A message whose own studies are done leaves their room to others: a full batch of them.
    later = [_studies(services, 2, seed=200 + 10 * n) for n in range(4)]
    assert pipeline.run_batch(services.sessions, services.storage, stub_screener, uploads[1], fill_to=6) == \
        {"done": 6, "error": 0, "skipped": 0}
    assert _statuses(services, [i for upload in later for i in upload]) == ["done"] * 6 + ["queued"] * 2
    assert stub_screener.images == 13


def test_a_message_whose_studies_another_batch_took_costs_two_reads(app, users, stub_screener):
    """Most messages of many small uploads find their studies screened in another task's batch: with nothing
    queued they end in two reads (it took five statements), and a message as large as the batch size whose
    studies were taken fills its batch from the queue (it screened nothing)."""
    from sqlalchemy import event

    services = services_of(app)
    first, second = _studies(services, 4), _studies(services, 4, seed=60)
    assert pipeline.run_batch(services.sessions, services.storage, stub_screener, first, fill_to=8)["done"] == 8
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    assert pipeline._claim(services.sessions, second, 0.0, 8, 5) == []
    assert len(statements) <= 2 and not [s for s in statements if s.lstrip().startswith("UPDATE")]
    waiting = _studies(services, 3, seed=80)
    claims = pipeline._claim(services.sessions, first, 0.0, 4, 5)  # four of its own, all done: room for four
    assert [claim.study_id for claim in claims] == waiting
