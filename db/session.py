"""Engines and sessions, from a URL handed in by the caller."""
import contextlib
import logging
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from db.models import AuditEvent

logger = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout so the portal and worker can share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def one_off_session(url: str, write: bool = False) -> Iterator[Session]:
    """A session for one command (committed at the end when `write`); its engine is disposed after."""
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        with sessions.begin() if write else sessions() as session:
            yield session
    finally:
        engine.dispose()


def audit(session: Session, actor_id: int | None, action: str, object_type: str,
          object_id: int | None, **detail: object) -> None:
    """Record an audit event in the caller's transaction."""
    session.add(AuditEvent(actor_id=actor_id, action=action, object_type=object_type,
                           object_id=object_id, detail=detail))
