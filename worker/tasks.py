"""Thin Celery tasks: names and retries (acks and prefetch are the Celery app's settings).

The work is in worker.pipeline."""
import logging
from contextlib import contextmanager

from celery import shared_task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from core.logs import bind, unbind
from core.services import CALIBRATE_TASK, SCREEN_TASK, current_services
from db import counters
from studies.calibrations import propose_from_zip
from worker import pipeline

logger = logging.getLogger(__name__)
RETRIED = (OperationalError, BrokerError)  # Celery retries these (autoretry_for); anything else fails the task


@contextmanager
def counted(task):
    """Count a run that raises: a retry when Celery will run it again, a failure when it gives up (as autoretry
    decides: a RETRIED exception with retries left). Signals come after the app context has gone: counted here."""
    try:
        yield
    except Exception as exc:
        retry = isinstance(exc, RETRIED) and (task.max_retries is None or task.request.retries < task.max_retries)
        counters.record(current_services().sessions, counters.TASK_RETRIES if retry else counters.TASK_FAILURES,
                        {"task": task.name.rpartition(".")[2], "exception": type(exc).__name__})
        raise


@shared_task(name=SCREEN_TASK, bind=True, autoretry_for=RETRIED, retry_backoff=2,
             retry_backoff_max=120, max_retries=20)
def screen_studies(self, study_ids: list[int]) -> dict:
    """Screen one batch of studies by id."""
    services = current_services()
    token = bind(task_id=self.request.id, first_study=min(study_ids), studies=len(study_ids))
    try:
        with counted(self):
            screener = pipeline.load_screener(services.settings)
            # Queued studies of other uploads fill the batch up to the batch size (dynamic batching).
            return pipeline.run_batch(services.sessions, services.storage, screener, study_ids,
                                      qa_share=services.settings.qa_share, fill_to=services.settings.batch_size,
                                      heartbeat_s=services.settings.heartbeat_s)
    finally:
        unbind(token)


@shared_task(name=CALIBRATE_TASK, bind=True, autoretry_for=RETRIED, retry_backoff=2, max_retries=5)
def calibrate_sample(self, storage_key: str, filename: str, department: str, miss_rate: float, actor_id: int) -> None:
    """Screen a labelled zip from the portal and store the operating point it proposes."""
    services = current_services()
    with counted(self):
        screener = pipeline.load_screener(services.settings)
        propose_from_zip(services, screener, storage_key, filename, department, miss_rate, actor_id)
