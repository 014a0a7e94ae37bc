"""Re-queue studies whose queue message was lost (Redis restarted, a worker killed mid-batch).

The database is the source of truth: a study still `queued` long after upload while the queue is
empty, or `running` on a worker whose heartbeat stopped (worker/heartbeat.py) or long after it was
claimed, has lost its message. The sweeper sends such studies again; the pipeline's claim and its
idempotent record step make a second delivery harmless. Every worker runs it in a timer thread of its
main process (started on `worker_ready`): the full sweep at start and every
PNEUMOSCREEN_SWEEP_INTERVAL_S seconds, and between those, every PNEUMOSCREEN_HEARTBEAT_S seconds, the
cheap look for studies of dead workers, so a killed worker's batch is sent again within seconds of its
third missed heartbeat. No Celery beat is needed.
"""
import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import Session

from core.services import QUEUE, Services
from db.models import Batch, Study, StudyStatus, Worker, heartbeat_cutoff, utcnow
from db.session import audit
from studies.duplicates import resolve_duplicates
from studies.retention import purge_originals

logger = logging.getLogger(__name__)

# Rows of workers silent this long go: by then the time limit has sent any study they held again.
PRUNE_WORKERS_AFTER = timedelta(days=1)
# A batch still `receiving` this long after it was opened lost its upload (the web process died mid-intake):
# the sweep closes it, so it shows the studies it holds as finished rather than receiving for ever.
CLOSE_RECEIVING_AFTER = timedelta(hours=1)
# PNEUMOSCREEN_RETENTION_DAYS is applied at start and then once a day.
PURGE_EVERY_S = 86_400


def requeue_stale(services: Services, queued_older_than_s: int | None = None,
                  running_older_than_s: int | None = None) -> int:
    """Send stale queued/running studies again, in chunks of the batch size; returns how many."""
    settings = services.settings
    now = utcnow()
    queued_cutoff = now - timedelta(seconds=queued_older_than_s or settings.stale_queued_s)
    running_cutoff = now - timedelta(seconds=running_older_than_s or settings.stale_running_s)
    last_touched = func.coalesce(Study.started_at, Study.created_at)
    with services.sessions.begin() as session:
        originals = session.scalars(select(Study.duplicate_of_id).distinct().where(
            Study.duplicate_of_id.is_not(None), Study.status == StudyStatus.QUEUED,
            Study.created_at < queued_cutoff)).all()
        if originals:
            resolve_duplicates(session, list(originals))
        # Its worker's heartbeat stopped, or (a worker without heartbeat, or one that hangs) it has
        # run longer than any batch should.
        lost_running = _take_back(session, now, or_(
            Study.claimed_by.in_(_dead_workers(services, now)), Study.started_at < running_cutoff))
        session.execute(delete(Worker).where(Worker.heartbeat_at < now - PRUNE_WORKERS_AFTER))
        _close_interrupted(session, now)
        # A queued study is only lost when nothing waits in the queue: otherwise it may be behind a backlog.
        lost_queued = [] if _backlog(services) else session.scalars(select(Study.id).where(
            Study.status == StudyStatus.QUEUED, last_touched < queued_cutoff, Study.duplicate_of_id.is_(None))).all()
    study_ids = sorted(set(lost_running) | set(lost_queued))
    if study_ids:
        services.enqueue(study_ids)
        logger.warning("sweeper re-queued %d studies (%d were running on a lost worker)",
                       len(study_ids), len(lost_running))
    return len(study_ids)


def requeue_orphaned(services: Services) -> int:
    """Send again the running studies of workers whose heartbeat stopped (the fast path); returns how many."""
    now = utcnow()
    with services.sessions.begin() as session:
        study_ids = _take_back(session, now, Study.claimed_by.in_(_dead_workers(services, now)))
    if study_ids:
        services.enqueue(study_ids)
        logger.warning("sweeper re-queued %d studies of a worker whose heartbeat stopped", len(study_ids))
    return len(study_ids)


def _close_interrupted(session: Session, now: datetime) -> None:
    """Close batches whose upload stopped before its last file was stored; audited, one event a batch."""
    closed = session.scalars(update(Batch).where(Batch.received_at.is_(None),
                                                 Batch.created_at < now - CLOSE_RECEIVING_AFTER)
                             .values(received_at=now).returning(Batch.id)).all()
    for batch_id in closed:
        audit(session, None, "batch.interrupted", "batch", batch_id,
              reason="the upload stopped before its last file was stored")
    if closed:
        logger.warning("sweeper closed %d batches whose upload was interrupted", len(closed))


def _dead_workers(services: Services, now: datetime):
    return select(Worker.id).where(Worker.heartbeat_at < heartbeat_cutoff(services.settings.heartbeat_s, now))


def _take_back(session: Session, now: datetime, lost: ColumnElement[bool]) -> list[int]:
    """Mark lost running studies queued again (touched now), so each is sent once, not on every sweep.

    A running study whose worker died has its message unacknowledged until the visibility timeout. One
    UPDATE ... RETURNING: two workers sweeping at once cannot both take back (and send) the same study."""
    return list(session.scalars(
        update(Study).where(Study.status == StudyStatus.RUNNING, Study.duplicate_of_id.is_(None), lost)
        .values(status=StudyStatus.QUEUED, started_at=now, claimed_by=None).returning(Study.id)).all())


def _backlog(services: Services) -> int:
    """Messages waiting in the screening queue (not counting those a worker holds)."""
    with services.celery.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(queue=QUEUE, passive=True).message_count
        except connection.channel_errors:
            return 0  # no such queue yet: nothing waiting


def start_sweeper(services: Services) -> threading.Event:
    """Run requeue_stale now and every sweep interval, requeue_orphaned every heartbeat between, in a daemon
    thread; set the event to stop it."""
    stop = threading.Event()
    settings = services.settings
    every = min(settings.heartbeat_s, settings.sweep_interval_s)

    def loop() -> None:
        next_sweep = next_purge = time.monotonic()
        while not stop.is_set():
            try:
                if settings.retention_days and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY_S
                    purge_originals(services.sessions, services.storage, settings.retention_days, by="sweeper")
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + settings.sweep_interval_s
                    requeue_stale(services)
                else:
                    requeue_orphaned(services)
            except Exception:  # broker or database down: try again next time, never die
                logger.exception("sweeper: this round failed; retrying in %d s", every)
            stop.wait(every)

    threading.Thread(target=loop, name="pneumoscreen-sweeper", daemon=True).start()
    return stop
