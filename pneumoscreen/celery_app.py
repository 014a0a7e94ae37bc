"""The Celery worker's entry point: `celery -A pneumoscreen.celery_app worker` (or `pneumoscreen worker`)."""
import logging

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from core.services import services_of
from pneumoscreen.app import create_app
from worker.sweeper import start_sweeper

logger = logging.getLogger(__name__)

flask_app = create_app()
services = services_of(flask_app)
celery_app = services.celery


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # A forked child must not share the parent's database sockets.
    services.engine.dispose(close=False)


_sweeper = {}


@worker_ready.connect
def _start_sweeper(**_kwargs) -> None:
    # In the main process, not the pool children: one sweeper per worker, at start and then periodically.
    _sweeper["stop"] = start_sweeper(services)


@worker_shutdown.connect
def _stop_sweeper(**_kwargs) -> None:
    if "stop" in _sweeper:
        _sweeper["stop"].set()
