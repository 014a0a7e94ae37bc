"""The Celery worker's entry point: `celery -A worker.app worker` (or `pneumoscreen worker`)."""
import logging

from celery.signals import worker_process_init

from pneumoscreen.app import create_app

logger = logging.getLogger(__name__)

flask_app = create_app()
services = flask_app.extensions["pneumoscreen"]
celery_app = services.celery


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # A forked child must not share the parent's database sockets.
    services.engine.dispose(close=False)
