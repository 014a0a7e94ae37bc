"""Re-queue studies whose queue message was lost (Redis restarted, a worker killed mid-batch).

The database is the source of truth: a study still `queued` long after upload while the queue is
empty, or `running` long after a worker claimed it, has lost its message. The sweeper sends such
studies again; the pipeline's claim and its idempotent record step make a second delivery harmless.
Every worker runs it in a timer thread of its main process (started on `worker_ready`, so once at
start and then every PNEUMOSCREEN_SWEEP_INTERVAL_S seconds); no Celery beat is needed.
"""
import logging
import threading
from datetime import timedelta

from sqlalchemy import func, select, update

from core.services import QUEUE, Services
from db.models import Study, StudyStatus, utcnow
from studies.duplicates import resolve_duplicates

logger = logging.getLogger(__name__)


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
        # A running study whose worker died: its message sits unacknowledged until the visibility
        # timeout. Mark it queued again (touched now), so it is sent once, not on every sweep.
        lost_running = session.scalars(select(Study.id).where(
            Study.status == StudyStatus.RUNNING, Study.started_at < running_cutoff,
            Study.duplicate_of_id.is_(None))).all()
        if lost_running:
            session.execute(update(Study).where(Study.id.in_(lost_running), Study.status == StudyStatus.RUNNING)
                            .values(status=StudyStatus.QUEUED, started_at=now))
        # A queued study is only lost when nothing waits in the queue: otherwise it may be behind a backlog.
        lost_queued = [] if _backlog(services) else session.scalars(select(Study.id).where(
            Study.status == StudyStatus.QUEUED, last_touched < queued_cutoff, Study.duplicate_of_id.is_(None))).all()
    study_ids = sorted(set(lost_running) | set(lost_queued))
    if study_ids:
        services.enqueue(study_ids)
        logger.warning("sweeper re-queued %d studies (%d were running on a lost worker)",
                       len(study_ids), len(lost_running))
    return len(study_ids)


def _backlog(services: Services) -> int:
    """Messages waiting in the screening queue (not counting those a worker holds)."""
    with services.celery.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(queue=QUEUE, passive=True).message_count
        except connection.channel_errors:
            return 0  # no such queue yet: nothing waiting


def start_sweeper(services: Services) -> threading.Event:
    """Run requeue_stale now and every sweep interval in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                requeue_stale(services)
            except Exception:  # broker or database down: try again next time, never die
                logger.exception("sweeper: this round failed; retrying in %d s", services.settings.sweep_interval_s)
            stop.wait(services.settings.sweep_interval_s)

    threading.Thread(target=loop, name="pneumoscreen-sweeper", daemon=True).start()
    return stop
