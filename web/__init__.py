"""The intake portal and JSON API: blueprints, login, CSRF, error pages, health check."""
import logging

from flask import Flask, current_app, g, jsonify, request
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import text
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)
csrf = CSRFProtect()


def services():
    return current_app.extensions["pneumoscreen"]


def db() -> Session:
    """The request's database session, opened on first use and closed when the request ends."""
    if "db" not in g:
        g.db = services().sessions()
    return g.db


def init_web(app: Flask) -> None:
    from web import api, auth, intake, review

    csrf.init_app(app)
    auth.login_manager.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(intake.bp)
    app.register_blueprint(review.bp)
    app.register_blueprint(api.bp)
    csrf.exempt(api.bp)
    app.teardown_appcontext(_close_db)
    app.register_error_handler(413, _too_large)
    app.register_error_handler(500, _server_error)
    app.add_url_rule("/healthz", "healthz", healthz)


def _close_db(exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        if exc is not None:
            session.rollback()
        session.close()


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _too_large(_error):
    limit = services().settings.max_upload_mb
    message = f"request is larger than the {limit} MB upload limit: split it into smaller batches"
    if _wants_json():
        return jsonify(error=message), 413
    return message, 413


def _server_error(_error):
    session = g.get("db")
    if session is not None:
        session.rollback()
    if _wants_json():
        return jsonify(error="internal error; it has been logged"), 500
    return "Internal error; it has been logged.", 500


def healthz():
    """200 when the database and the broker answer, 503 otherwise."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    healthy = all(value == "ok" for value in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503


def _check_database() -> str:
    try:
        with services().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # any failure here means "not healthy", with the reason
        logger.warning("health check: database unavailable: %s", exc)
        return f"unavailable: {type(exc).__name__}"


def _check_broker() -> str:
    try:
        with services().celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        logger.warning("health check: broker unavailable: %s", exc)
        return f"unavailable: {type(exc).__name__}"
