"""Worker heartbeats: how the sweeper tells, within seconds, that the process holding a study died.

The process that runs the tasks heartbeats for itself: a prefork pool child (started on
`worker_process_init`), or the main process of a solo or threads worker (pneumoscreen/celery_app.py).
It registers a new `workers` row (hostname:pid for people; the row id, never reused, is what
`studies.claimed_by` records at claim) and a daemon thread refreshes `heartbeat_at` every
PNEUMOSCREEN_HEARTBEAT_S seconds. A kill -9 stops the thread with the process, so the row goes stale
and the sweeper sends that worker's running studies again (worker/sweeper.py). A process that does
not heartbeat (`pneumoscreen screen`, tests calling the pipeline) claims with no worker id, and its
studies fall under the sweeper's time limit instead.
"""
import logging
import os
import socket
import threading

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.services import Services
from db.models import Worker, utcnow

logger = logging.getLogger(__name__)

# pid -> workers.id: keyed by pid so that a forked child never claims under its parent's row.
_registered: dict[int, int] = {}
_stops: dict[int, threading.Event] = {}


def current_worker_id() -> int | None:
    """The workers row of this process, when this process heartbeats; None otherwise."""
    return _registered.get(os.getpid())


def beat(sessions: sessionmaker[Session]) -> int:
    """Refresh this process's heartbeat, registering it first (or again, if its row was pruned)."""
    pid, now = os.getpid(), utcnow()
    with sessions.begin() as session:
        worker_id = _registered.get(pid)
        if worker_id is not None and session.execute(
                update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now)).rowcount:
            return worker_id
        worker = Worker(name=f"{socket.gethostname()}:{pid}"[:128], started_at=now, heartbeat_at=now)
        session.add(worker)
        session.flush()
        _registered[pid] = worker.id
    logger.info("worker %s registered as workers.id=%d", worker.name, worker.id)
    return worker.id


def start_heartbeat(services: Services) -> threading.Event:
    """Heartbeat now and every PNEUMOSCREEN_HEARTBEAT_S in a daemon thread; once per process."""
    pid = os.getpid()
    if pid in _stops:
        return _stops[pid]
    stop = _stops[pid] = threading.Event()
    interval = services.settings.heartbeat_s

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat(services.sessions)
            except Exception:  # database down: the sweeper cannot run either; beat again next time
                logger.warning("heartbeat failed; retrying in %d s", interval, exc_info=True)

    try:
        beat(services.sessions)  # registered before the first claim, so its studies carry this worker's id
    except Exception:
        logger.warning("heartbeat: could not register this worker yet", exc_info=True)
    threading.Thread(target=loop, name="pneumoscreen-heartbeat", daemon=True).start()
    return stop
