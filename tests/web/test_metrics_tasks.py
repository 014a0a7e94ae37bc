"""Celery task failures and retries counted for /metrics (worker/tasks.py), run eagerly through the real task."""
from sqlalchemy.exc import OperationalError

from tests.web.test_metrics import samples, scrape
from worker import pipeline
from worker.tasks import screen_studies


def test_task_retries_and_failures_are_counted(app, stub_screener, monkeypatch):
    task = screen_studies  # bound to this test's app (the Celery app create_app made the default)

    def database_down(*_args, **_kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(pipeline, "run_batch", database_down)
    assert task.apply(args=[[1]]).failed()  # retried max_retries times, then given up
    monkeypatch.setattr(pipeline, "run_batch", lambda *args, **kwargs: 1 / 0)
    assert task.apply(args=[[1]]).failed()  # not a retried exception: fails at once
    values = samples(scrape(app.test_client()))
    labels = (("exception", "OperationalError"), ("task", "screen_studies"))
    assert values[("pneumoscreen_task_retries_total", labels)] == task.max_retries
    assert values[("pneumoscreen_task_failures_total", labels)] == 1
    assert values[("pneumoscreen_task_failures_total", (("exception", "ZeroDivisionError"),
                                                        ("task", "screen_studies")))] == 1
    assert ("pneumoscreen_task_retries_total", (("exception", "ZeroDivisionError"), ("task", "screen_studies"))) \
        not in values
