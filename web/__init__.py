"""The intake portal and JSON API: blueprints, login, CSRF, error pages, health check."""
import logging
import re
import uuid

from flask import Flask, g, jsonify, request
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from werkzeug.routing import IntegerConverter

from core.logs import bind, unbind
from core.services import current_services
from db.models import UNFINISHED, Study, Worker, heartbeat_cutoff
from web import (
    admin,
    api,
    auth,
    batches,
    calibration,
    dicomweb,
    dicomweb_read,
    dicomweb_retrieve,  # noqa: F401 (imported for its routes, on dicomweb_read.bp)
    dicomweb_search,  # noqa: F401 (imported for its routes, on dicomweb_read.bp)
    exports,
    fhir,
    metrics,
    qa,
    review,
)
from web.context import close_db_session, csrf, drop_db_session
from web.errors import init_errors, wants_json
from web.times import init_times

logger = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RowId(IntegerConverter):
    """Every `<int:...>` in a route is a row id: one past the database's 32-bit integers is a 404, not a 500."""

    def __init__(self, url_map, **_kwargs):
        super().__init__(url_map, min=0, max=2**31 - 1)


def init_web(app: Flask) -> None:
    """Register the blueprints, login, CSRF, request ids, error pages and the health check on `app`."""
    app.url_map.converters["int"] = RowId
    csrf.init_app(app)
    auth.login_manager.init_app(app)
    for blueprint in (auth, batches, review, qa, api, admin, calibration, metrics, exports, fhir, dicomweb,
                      dicomweb_read):
        app.register_blueprint(blueprint.bp)
    csrf.exempt(dicomweb.bp)  # bearer tokens only: no cookie session can post there
    csrf.exempt(api.bp)
    app.before_request(_bind_request_id)
    app.after_request(_send_request_id)
    app.after_request(_security_headers)
    metrics.init_app(app)  # counts every request (after_request) for /metrics
    app.teardown_appcontext(_end_request)
    init_times(app)  # the `when`, `since` and `fromiso` template filters
    init_errors(app)  # branded 400/403/404/413/500 pages, JSON under /api/ and /dicomweb/; CSRF expiry to login
    app.register_error_handler(OperationalError, _database_down)
    app.add_url_rule("/healthz", "healthz", healthz)


def _bind_request_id() -> None:
    """Tag every log line of this request; a caller's X-Request-ID is kept when it is sane."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.log_token = bind(request_id=g.request_id)


# Pages and API answers carry patient data: never framed, never sniffed, never cached. Inline style
# attributes draw the progress bars; scripts come from our own static files only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _send_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def _end_request(exc: BaseException | None) -> None:
    if "log_token" in g:
        unbind(g.pop("log_token"))
    close_db_session(exc)


def _database_down(error):
    """The database is unreachable (restarting, failing over): 503, so clients retry; nothing half-done."""
    logger.warning("database unavailable: %s", type(error.orig).__name__ if error.orig else error)
    session = drop_db_session()
    if session is not None:
        session.invalidate()
    message = "the database is unavailable; retry in a minute"
    if wants_json():
        return jsonify(error=message), 503, {"Retry-After": "30"}
    return message, 503, {"Retry-After": "30"}


def healthz():
    """200 when the database and the broker answer, 503 otherwise; "degraded" (still 200) when studies wait
    and no worker is alive: the portal works, screening does not, and a monitor should say so."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    if any(value != "ok" for value in checks.values()):
        return jsonify(status="unavailable", **checks), 503
    alive, waiting = _screening_state()
    body = dict(status="ok", **checks, workers_alive=alive, studies_waiting=waiting)
    if waiting and not alive:
        body.update(status="degraded", message=f"{waiting} studies wait and no worker is alive "
                                                "(no heartbeat): start or restart a worker")
    return jsonify(body), 200


def _screening_state() -> tuple[int, int]:
    """Worker processes with a fresh heartbeat (worker/heartbeat.py), and studies not finished."""
    services = current_services()
    with services.sessions() as session:
        alive = session.scalar(select(func.count()).select_from(Worker).where(
            Worker.heartbeat_at >= heartbeat_cutoff(services.settings.heartbeat_s)))
        waiting = session.scalar(select(func.count()).select_from(Study).where(Study.status.in_(UNFINISHED)))
    return alive, waiting


def _check_database() -> str:
    try:
        with current_services().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # any failure here means "not healthy", with the reason
        logger.warning("health check: database unavailable: %s", exc)
        return f"unavailable: {type(exc).__name__}"


def _check_broker() -> str:
    try:
        with current_services().celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        logger.warning("health check: broker unavailable: %s", exc)
        return f"unavailable: {type(exc).__name__}"
