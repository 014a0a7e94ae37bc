"""The one factory: builds the Flask app (portal, API) and its Celery app for every entry point."""
import logging
from datetime import timedelta
from typing import Mapping

from celery import Celery, Task
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from core.services import QUEUE, Services, attach
from core.settings import Settings, local_secret
from core.storage import Storage
from db.session import make_engine, make_session_factory
from web import init_web

logger = logging.getLogger(__name__)


def create_app(overrides: Mapping[str, object] | None = None, settings: Settings | None = None) -> Flask:
    """Build the app from the environment (or `settings`), with `overrides` for tests."""
    settings = (settings or Settings.from_env()).with_overrides(overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Flask("pneumoscreen", template_folder="../web/templates", static_folder="../web/static")
    app.config.update(
        SECRET_KEY=settings.secret_key or local_secret(settings.data_dir),
        MAX_CONTENT_LENGTH=settings.max_upload_mb * 1024 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        # Signed with a timestamp Flask checks on every request, and refreshed by each: an idle timeout.
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.session_idle_minutes),
        REMEMBER_COOKIE_SECURE=settings.secure_cookies,
    )
    if settings.proxy_hops:
        # Only as many forwarding headers as there are proxies we run: a client cannot forge its address
        # (the login throttle counts per address) or the scheme.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)
    engine = make_engine(settings.database_url)
    attach(app, Services(settings=settings, engine=engine, sessions=make_session_factory(engine),
                         storage=Storage(settings.storage_dir), celery=_celery(app, settings)))
    init_web(app)
    return app


def _celery(app: Flask, settings: Settings) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask, include=["worker.tasks"])
    celery.conf.update(
        broker_url=settings.broker_url,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        # A batch of 32 films takes seconds: a message unacknowledged for 15 minutes had its
        # worker die, and Redis hands it to another worker.
        broker_transport_options={"visibility_timeout": 900},
    )
    if settings.embedded:
        folder = str(settings.broker_dir)
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
        celery.conf.broker_transport_options = {
            "data_folder_in": folder, "data_folder_out": folder, "control_folder": folder,
            "store_processed": False}
    celery.set_default()
    return celery
