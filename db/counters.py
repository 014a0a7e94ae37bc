"""Counters any process can raise (DICOM listener, workers, STOW-RS) and /metrics reads (db.models.MetricCounter).

A counter row only ever rises: `increment` adds in one upsert, safe when many processes add at once (SQLite
serialises writers; PostgreSQL's INSERT ... ON CONFLICT DO UPDATE locks the one row). Label values are short
words, never ids, UIDs or file names, so the number of rows stays small.
"""
import logging
import re

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from db.models import MetricCounter

logger = logging.getLogger(__name__)

# The counters written here, with the help text /metrics shows for them.
DICOM_ASSOCIATIONS = "pneumoscreen_dicom_associations_total"
DICOM_INSTANCES = "pneumoscreen_dicom_instances_total"
TASK_FAILURES = "pneumoscreen_task_failures_total"
TASK_RETRIES = "pneumoscreen_task_retries_total"
HELP = {
    DICOM_ASSOCIATIONS: "DICOM associations the listener accepted or rejected (by reason)",
    DICOM_INSTANCES: "DICOM instances received over C-STORE or STOW-RS, by outcome and DICOM status",
    TASK_FAILURES: "Celery task runs that failed for good, by task and exception class",
    TASK_RETRIES: "Celery task runs that failed and will be retried, by task and exception class",
}
INSTANCE_VIA = ("c-store", "stow-rs")
INSTANCE_OUTCOMES = ("stored", "ignored", "refused")

_NAME = re.compile(r"[a-z_][a-z0-9_]*_total")
_LABEL = re.compile(r"[a-z_][a-z0-9_]*")
_VALUE = re.compile(r"[A-Za-z0-9_.:/+-]{0,64}")
_PAIR = re.compile(r'([a-z_][a-z0-9_]*)="([^"]*)"')


def encode_labels(labels: dict[str, str]) -> str:
    """'a="x",b="y"' with the keys sorted; a value must be a short word (no quotes, spaces or free text)."""
    for key, value in labels.items():
        if not _LABEL.fullmatch(key) or not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise ValueError(f"metric label {key}={value!r}: names are lower_case words, values short words "
                             "(letters, digits, _.:/+-, at most 64)")
    return ",".join(f'{key}="{labels[key]}"' for key in sorted(labels))


def decode_labels(text: str) -> dict[str, str]:
    """The labels encode_labels wrote, as a dict."""
    return dict(_PAIR.findall(text))


def increment(session: Session, name: str, labels: dict[str, str], by: float = 1) -> None:
    """Add `by` to the counter `name` with `labels`, in the caller's transaction (made when new)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"counter name {name!r}: lower_case, ending in _total")
    if by < 0:
        raise ValueError("a counter only rises")
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"counters need SQLite or PostgreSQL, not {dialect}")
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(MetricCounter).values(name=name, labels=encode_labels(labels), value=float(by))
    session.execute(statement.on_conflict_do_update(
        index_elements=[MetricCounter.name, MetricCounter.labels],
        set_={"value": MetricCounter.value + statement.excluded.value}))


def record(sessions: sessionmaker[Session], name: str, labels: dict[str, str], by: float = 1) -> None:
    """`increment` in a transaction of its own; a database failure is logged, never raised: counting must not
    break the work it counts (a retry because the database is down cannot be written to it)."""
    encode_labels(labels)  # a programming error in the labels still raises
    try:
        with sessions.begin() as session:
            increment(session, name, labels, by)
    except Exception as exc:  # database down, locked: the count is lost, the work goes on
        logger.warning("counter %s%s not raised: %s", name, labels, exc)


def count_instances(session: Session, via: str, outcome: str, status: int, by: int = 1) -> None:
    """Count DICOM instances received: via c-store or stow-rs; outcome stored, ignored (accepted, not screened)
    or refused; status the DICOM status answered (0x0000 success, 0xA900, 0xC000...)."""
    if via not in INSTANCE_VIA or outcome not in INSTANCE_OUTCOMES:
        raise ValueError(f"count_instances: via one of {INSTANCE_VIA}, outcome one of {INSTANCE_OUTCOMES}")
    increment(session, DICOM_INSTANCES, {"via": via, "outcome": outcome, "status": f"0x{status:04X}"}, by)


def read_all(session: Session) -> list[tuple[str, dict[str, str], float]]:
    """Every counter as (name, labels, value), sorted."""
    rows = session.execute(select(MetricCounter.name, MetricCounter.labels, MetricCounter.value)
                           .order_by(MetricCounter.name, MetricCounter.labels)).all()
    return [(name, decode_labels(labels), value) for name, labels, value in rows]
