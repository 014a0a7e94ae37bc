"""The Celery worker's entry point: `celery -A pneumoscreen.celery_app worker` (or `pneumoscreen worker`)."""
import logging

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from core.services import services_of
from pneumoscreen.app import create_app
from worker.heartbeat import start_heartbeat
from worker.outbound import start_delivery
from worker.pipeline import preload
from worker.sweeper import start_sweeper

logger = logging.getLogger(__name__)

flask_app = create_app()
services = services_of(flask_app)
celery_app = services.celery


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # A forked child must not share the parent's database sockets.
    services.engine.dispose(close=False)
    # The process that runs the tasks heartbeats for itself, so a kill -9 silences exactly the worker
    # named in its studies' claimed_by. Sent in each prefork pool child, and by the solo pool in the main process.
    start_heartbeat(services)
    preload(services.settings)  # in a thread: the child reports ready at once


_sweeper = {}


@worker_ready.connect
def _start_sweeper(sender=None, **_kwargs) -> None:
    # In the main process, not the pool children: one sweeper per worker, at start and then periodically.
    _sweeper["stop"] = start_sweeper(services)
    # Results to the PACS/RIS/FHIR server go out from this thread, never from a screening task: a slow RIS
    # must not hold a film. Every worker runs one; their claims keep a message from going out twice.
    _sweeper["deliver"] = start_delivery(services)
    if not isinstance(getattr(sender, "pool", None), PreforkPool):
        start_heartbeat(services)  # tasks run in this process (threads pool: no worker_process_init); once per pid
        preload(services.settings)


@worker_shutdown.connect
def _stop_sweeper(**_kwargs) -> None:
    for stop in _sweeper.values():
        stop.set()
