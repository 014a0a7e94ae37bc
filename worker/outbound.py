"""Deliver queued results (studies.outbound) to the PACS (DICOM SR and Secondary Capture), the RIS (HL7 v2
ORU^R01 over MLLP) and a FHIR server, off the screening path: a daemon thread in every worker's main process
(`start_delivery`, next to the sweeper) looks for due messages every few seconds.

Each message is claimed in one conditional UPDATE (state pending, or sending with its lease run out; due; no
older version of the same result and kind still on its way), so two deliverers never send one message and the
versions of a result go out in order. The payload is built from the result in that same short transaction, the
network send happens outside any transaction, and a second transaction records what happened: `sent`, or
`pending` again after 30 s x 2^(attempt-1) (at most 1 h), or `failed` after MAX_ATTEMPTS. A deliverer killed
mid-send leaves the message `sending`; after LEASE another sends it again, so receivers see a retry as the same
message (HL7 MSH-10 stays PS<message id>, FHIR is a conditional update by identifier, SR/SC keep their UIDs).
"""
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from core.services import Services
from core.storage import Storage
from db.models import Department, OutboundMessage, OutboundState, ReviewFlag, Study, utcnow
from db.session import audit
from studies.outbound import ACTIVE, destinations
from worker.hl7 import oru_r01, send_mllp

logger = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)  # longer than any one send can take (TIMEOUT_S per network step)
TIMEOUT_S = 30.0
BACKOFF_S, BACKOFF_CAP_S, MAX_ATTEMPTS = 30, 3600, 8
DELIVER_EVERY_S = 5.0
BATCH = 20
MAX_RESPONSE_BYTES = 64 * 1024


def backoff(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt."""
    return timedelta(seconds=min(BACKOFF_S * 2 ** (attempts - 1), BACKOFF_CAP_S))


@dataclass
class _Job:
    """A claimed message with what to send and where (read in the claim's transaction)."""

    message_id: int
    kind: str
    attempts: int
    config: dict
    payload: Any
    error: str | None = None  # the payload could not be built


def deliver_due(sessions: sessionmaker[Session], storage: Storage, now: datetime | None = None,
                limit: int = BATCH) -> dict[str, int]:
    """Send up to `limit` due messages; returns how many ended in each state ('skipped': another took it)."""
    now = now or utcnow()
    with sessions() as session:
        due = session.scalars(select(OutboundMessage.id).where(
            OutboundMessage.state.in_(ACTIVE), OutboundMessage.next_attempt_at <= now, ~_older_on_its_way())
            .order_by(OutboundMessage.next_attempt_at, OutboundMessage.id).limit(limit)).all()
    outcome: Counter[str] = Counter()
    for message_id in due:
        try:
            outcome[_deliver_one(sessions, storage, message_id, now)] += 1
        except Exception:  # the database went away mid-way: the lease brings the message back
            logger.exception("outbound message %d: delivery interrupted", message_id)
            outcome["interrupted"] += 1
    return dict(outcome)


def _deliver_one(sessions: sessionmaker[Session], storage: Storage, message_id: int, now: datetime) -> str:
    with sessions.begin() as session:
        job = _claim(session, storage, message_id, now)
    if not isinstance(job, _Job):
        return job
    error = job.error
    if error is None:
        try:
            SENDERS[job.kind](job)
        except Exception as exc:  # a sender's exception is the reason, for people; never stops the others
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    with sessions.begin() as session:
        return _finish(session, job, error, now)


def _older_on_its_way():
    """An older version of the same result and kind is still pending or being sent: this one waits for it."""
    older = aliased(OutboundMessage)
    return exists().where(
        older.study_result_id == OutboundMessage.study_result_id, older.kind == OutboundMessage.kind,
        older.result_version < OutboundMessage.result_version, older.state.in_(ACTIVE))


def _claim(session: Session, storage: Storage, message_id: int, now: datetime) -> _Job | str:
    claimed = session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.id == message_id, OutboundMessage.state.in_(ACTIVE),
               OutboundMessage.next_attempt_at <= now, ~_older_on_its_way())
        .values(state=OutboundState.SENDING, next_attempt_at=now + LEASE, attempts=OutboundMessage.attempts + 1)
        .execution_options(synchronize_session=False)).rowcount
    if not claimed:
        return "skipped"
    message = session.scalars(select(OutboundMessage).where(OutboundMessage.id == message_id)
                              .execution_options(populate_existing=True)).one()
    result = message.study_result
    if result.version > message.result_version:
        message.state = OutboundState.SUPERSEDED
        audit(session, None, "outbound.superseded", "outbound_message", message.id, by_version=result.version)
        return OutboundState.SUPERSEDED
    department = session.get(Department, result.department_id) if result.department_id else None
    config = (department.outbound if department else None) or {}
    target = destinations(config).get(message.kind)
    if target is None:
        message.state, message.last_error = OutboundState.FAILED, f"the department no longer sends {message.kind}"
        audit(session, None, "outbound.failed", "outbound_message", message.id, error=message.last_error)
        return OutboundState.FAILED
    message.destination = target[:200]
    audit(session, None, "outbound.sending", "outbound_message", message.id, attempt=message.attempts,
          destination=message.destination)
    job = _Job(message.id, message.kind, message.attempts, config, None)
    try:
        job.payload = _build(session, storage, message, department.name, config, now)
    except Exception as exc:
        logger.exception("outbound message %d: could not build the %s", message.id, message.kind)
        job.error = f"could not build the {message.kind}: {type(exc).__name__}: {exc}"
    return job


def _build(session: Session, storage: Storage, message: OutboundMessage, department: str, config: dict,
           now: datetime) -> Any:
    """What goes on the wire for this kind, from the result as it stands now."""
    result = message.study_result
    if message.kind == "hl7":
        reasons = session.scalars(select(ReviewFlag.reasons).join(Study, Study.id == ReviewFlag.study_id)
                                  .where(Study.study_result_id == result.id).order_by(Study.id)).all()
        unique = list(dict.fromkeys(reason for found in reasons for reason in found))
        return oru_r01(result, department, unique, config["hl7"], _control_id(message.id), now)
    if message.kind == "fhir":
        from studies.fhir import diagnostic_report  # written beside this module; read only when sending

        return diagnostic_report(session, result)
    from studies.dicom_reports import secondary_capture, structured_report

    dataset = (structured_report if message.kind == "sr" else secondary_capture)(session, storage, result)
    if dataset is None:
        raise ValueError("nothing to send: the result has no deciding image")
    return [dataset]


def _control_id(message_id: int) -> str:
    return f"PS{message_id}"  # the same on every attempt: a RIS can tell a retry from a new message


def _finish(session: Session, job: _Job, error: str | None, now: datetime) -> str:
    # The first statement writes, so SQLite holds the write lock from the start (a read first could not upgrade
    # once another deliverer had written); it also finds out whether the lease ran out and another took over.
    outcome = {"state": OutboundState.SENT, "sent_at": utcnow(), "last_error": None} if error is None \
        else {"last_error": error[:2000]}
    if not session.execute(
            update(OutboundMessage).where(OutboundMessage.id == job.message_id,
                                          OutboundMessage.state == OutboundState.SENDING,
                                          OutboundMessage.attempts == job.attempts)
            .values(**outcome).execution_options(synchronize_session=False)).rowcount:
        logger.warning("outbound message %d: another deliverer took it over (its lease ran out)", job.message_id)
        return "lost"
    message = session.scalars(select(OutboundMessage).where(OutboundMessage.id == job.message_id)
                              .execution_options(populate_existing=True)).one()
    if error is None:
        audit(session, None, "outbound.sent", "outbound_message", message.id, attempt=message.attempts,
              destination=message.destination)
        return OutboundState.SENT
    if message.study_result.version > message.result_version:
        message.state = OutboundState.SUPERSEDED  # its content is gone; the newer version goes instead
    elif message.attempts >= MAX_ATTEMPTS:
        message.state = OutboundState.FAILED
    else:
        message.state, message.next_attempt_at = OutboundState.PENDING, now + backoff(message.attempts)
    retry_at = message.next_attempt_at.isoformat() if message.state == OutboundState.PENDING else None
    audit(session, None, f"outbound.{message.state}", "outbound_message", message.id, attempt=message.attempts,
          error=message.last_error, next_attempt_at=retry_at)
    logger.warning("outbound message %d (%s to %s) attempt %d: %s; now %s", message.id, message.kind,
                   message.destination, message.attempts, error, message.state)
    return message.state


# --- senders: each raises an exception with a readable reason when the destination did not take it ----------

def _send_hl7(job: _Job) -> None:
    config = job.config["hl7"]
    send_mllp(config["host"], config["port"], job.payload, _control_id(job.message_id), TIMEOUT_S)


def _send_fhir(job: _Job) -> None:
    """A conditional update by identifier: a retry, or the next version, updates the same DiagnosticReport on the
    server instead of creating another (a POST would create one per attempt whose answer got lost)."""
    config, report = job.config["fhir"], dict(job.payload)
    identifier = report["identifier"][0]
    report.pop("id", None)  # the server names it; a conditional update matches by identifier
    url = (f"{config['url']}/DiagnosticReport?identifier="
           f"{quote(identifier['system'], safe='')}%7C{quote(identifier['value'], safe='')}")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if config.get("token"):
        headers["Authorization"] = f"Bearer {config['token']}"
    request = Request(url, data=json.dumps(report).encode(), headers=headers, method="PUT")
    try:
        with urlopen(request, timeout=TIMEOUT_S) as response:
            response.read(MAX_RESPONSE_BYTES)
    except HTTPError as exc:
        body = exc.read(2000).decode("utf-8", "replace")
        raise RuntimeError(f"the FHIR server answered {exc.code} {exc.reason}: {body[:300]}") from None
    except URLError as exc:
        raise RuntimeError(f"cannot reach the FHIR server: {exc.reason}") from None


def _send_dicom(job: _Job) -> None:
    from worker.dicom_store import c_store

    c_store(job.config["dicom"], job.payload)


SENDERS = {"hl7": _send_hl7, "fhir": _send_fhir, "sr": _send_dicom, "sc": _send_dicom}


def start_delivery(services: Services, every: float = DELIVER_EVERY_S) -> threading.Event:
    """Deliver due messages now and every `every` seconds in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                outcome = deliver_due(services.sessions, services.storage)
            except Exception:  # database down: try again next time, never die
                logger.exception("outbound delivery: this round failed; retrying in %g s", every)
                outcome = {}
            # A full batch handled with none left to others: more may be due, so go on at once.
            if outcome.get("skipped") or sum(outcome.values()) < BATCH:
                stop.wait(every)

    threading.Thread(target=loop, name="pneumoscreen-outbound", daemon=True).start()
    return stop
