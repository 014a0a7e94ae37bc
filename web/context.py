"""Per-request helpers every blueprint uses: the app's services, the request's database session, CSRF."""
import logging

from flask import g
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session

from core.services import current_services

logger = logging.getLogger(__name__)
csrf = CSRFProtect()


def db_session() -> Session:
    """The request's database session, opened on first use and closed when the request ends."""
    if "db_session" not in g:
        g.db_session = current_services().sessions()
    return g.db_session


def close_db_session(exc: BaseException | None) -> None:
    """Teardown: roll back what a failed request left, and close the session."""
    session = g.pop("db_session", None)
    if session is not None:
        if exc is not None:
            session.rollback()
        session.close()


def drop_db_session() -> Session | None:
    """Take the request's session away (the database went down): the caller invalidates it."""
    return g.pop("db_session", None)
