"""Thin Celery tasks: names, retries, acks. The work is in worker.pipeline."""
import logging

from celery import shared_task
from flask import current_app
from sqlalchemy.exc import OperationalError
from kombu.exceptions import OperationalError as BrokerError

from pneumoscreen.logs import bind, unbind
from worker import pipeline
from worker.intake import SCREEN_TASK

logger = logging.getLogger(__name__)


@shared_task(name=SCREEN_TASK, acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError, BrokerError), retry_backoff=2, retry_backoff_max=120,
             max_retries=20, ignore_result=True, bind=True)
def screen_studies(self, study_ids: list[int]) -> dict:
    """Screen one batch of studies by id."""
    services = current_app.extensions["pneumoscreen"]
    token = bind(task_id=self.request.id, first_study=min(study_ids), studies=len(study_ids))
    try:
        screener = pipeline.load_screener(services.settings.weights_dir)
        return pipeline.run_batch(services.sessions, services.storage, screener, study_ids)
    finally:
        unbind(token)
