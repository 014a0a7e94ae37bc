"""What request handlers, tasks and the DICOM listener share, and the one way to reach it from a Flask app."""
import logging
from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from core.storage import Storage

logger = logging.getLogger(__name__)

EXTENSION = "pneumoscreen"
# The queue carries study ids only; the database holds each study's state.
QUEUE = "screening"
SCREEN_TASK = "pneumoscreen.screen_studies"
CALIBRATE_TASK = "pneumoscreen.calibrate_sample"


@dataclass
class Services:
    """Settings, database, storage and queue of one process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery

    def enqueue(self, study_ids: list[int]) -> None:
        """Queue ids in chunks of the batch size: one task, one model run per chunk."""
        size = self.settings.batch_size
        for start in range(0, len(study_ids), size):
            self.send(SCREEN_TASK, study_ids[start:start + size])

    def send(self, task: str, *args: object) -> None:
        """Queue one task by name (workers own the code; the sender needs only the name)."""
        self.celery.send_task(task, args=list(args), queue=QUEUE)


def attach(app: Flask, services: Services) -> None:
    """Make `services` what `services_of(app)` and `current_services()` return."""
    app.extensions[EXTENSION] = services


def services_of(app: Flask) -> Services:
    """The services a Flask app was built with (create_app)."""
    return app.extensions[EXTENSION]


def current_services() -> Services:
    """The services of the app serving this request or running this task."""
    return services_of(current_app)
