"""Results on their way back: each department's destinations (PACS, RIS, FHIR server) and the outbound queue.

`Department.outbound` says where a department's results go (each part optional):
    {"dicom": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104, "send": ["sr", "sc"]},
     "hl7": {"host": "ris.local", "port": 2575, "receiving_application": "RIS", "receiving_facility": "HOSP"},
     "fhir": {"url": "https://fhir.example/fhir", "token": "..."}}
`queue_many` writes one pending `OutboundMessage` per kind ("sr", "sc", "hl7", "fhir") for each version of a
result that says something (never `registered`); worker/outbound.py delivers them. A message is built when it
is sent, from the result as it then stands, so an older version still waiting when a newer one is queued is
`superseded` (its content no longer exists; the newer message carries the current one). A version that went
out is always followed by the next one: a sent final report is followed by its amendment.
"""
import ipaddress
import logging
import re
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.settings import is_ae_title
from db import accounts, counters
from db.models import Department, OutboundMessage, OutboundState, ReportStatus, StudyResult, utcnow
from db.session import audit

logger = logging.getLogger(__name__)

DICOM_KINDS = ("sr", "sc")
# A result with something to say; `registered` (images arrived, nothing read) stays home.
SENT_STATUSES = (ReportStatus.PRELIMINARY, ReportStatus.FINAL, ReportStatus.AMENDED, ReportStatus.CORRECTED,
                 ReportStatus.CANCELLED)
# Still on its way: a deliverer may pick it up (pending) or holds it (sending).
ACTIVE = (OutboundState.PENDING, OutboundState.SENDING)

_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# HL7 names (HD): no delimiters (|^~\&), no control characters.
_HL7_NAME = re.compile(r"[A-Za-z0-9 ._-]{1,40}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # goes into an HTTP header: printable ASCII, no spaces


# --- configuration -------------------------------------------------------------------------------------------

def check_config(raw: object) -> dict | None:
    """The department's outbound configuration, checked strictly and normalised; ValueError names the bad value.
    An empty configuration is None (nowhere)."""
    if raw is None:
        return None
    parts = _mapping(raw, "outbound", {"dicom", "hl7", "fhir"})
    config = {}
    if parts.get("dicom") is not None:
        dicom = _mapping(parts["dicom"], "dicom", {"ae_title", "host", "port", "send"})
        send = dicom.get("send", list(DICOM_KINDS))
        if not isinstance(send, list) or not send or not set(send) <= set(DICOM_KINDS) or len(set(send)) != len(send):
            raise ValueError(f"dicom send must be a list of {' and '.join(DICOM_KINDS)}, each once: {send!r}")
        config["dicom"] = {"ae_title": check_ae_title(dicom.get("ae_title")), "host": check_host(dicom.get("host")),
                           "port": check_port(dicom.get("port")),
                           "send": [kind for kind in DICOM_KINDS if kind in send]}
    if parts.get("hl7") is not None:
        hl7 = _mapping(parts["hl7"], "hl7", {"host", "port", "receiving_application", "receiving_facility"})
        config["hl7"] = {"host": check_host(hl7.get("host")), "port": check_port(hl7.get("port")),
                         "receiving_application": _hl7_name(hl7.get("receiving_application", "RIS"),
                                                            "receiving_application"),
                         "receiving_facility": _hl7_name(hl7.get("receiving_facility", ""), "receiving_facility")}
    if parts.get("fhir") is not None:
        fhir = _mapping(parts["fhir"], "fhir", {"url", "token"})
        config["fhir"] = {"url": check_url(fhir.get("url")), "token": _token(fhir.get("token"))}
    return config or None


def _mapping(value: object, what: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{what}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}")
    return value


def check_ae_title(value: object) -> str:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash (DICOM PS3.5 AE)."""
    title = value.strip() if isinstance(value, str) else ""
    if not is_ae_title(title):
        raise ValueError(f"AE title must be 1 to 16 printable ASCII characters without a backslash: {value!r}")
    return title


def check_host(value: object) -> str:
    """A host name (RFC 1123 labels) or an IP address."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            labels = value.rstrip(".").split(".")
            if len(value) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels):
                return value.rstrip(".").lower()
    raise ValueError(f"host must be a host name or an IP address: {value!r}")


def check_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"port must be a whole number from 1 to 65535: {value!r}")
    return value


def check_url(value: object) -> str:
    """An http(s) base URL with a host; no credentials, query or fragment (the token goes in a header)."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        port_ok = parts is not None and parts.port != 0  # .port raises ValueError on a port out of range
    except ValueError:
        parts, port_ok = None, False
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok
            or parts.username or parts.password or parts.query or parts.fragment
            or any(c <= " " or c == "\x7f" for c in value) or len(value) > 500):
        raise ValueError(f"FHIR URL must be an http:// or https:// base URL without credentials, query or "
                         f"fragment: {value!r}")
    check_host(parts.hostname)
    return value.rstrip("/")


def _hl7_name(value: object, what: str) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not _HL7_NAME.fullmatch(value):
        raise ValueError(f"hl7 {what} must be 1 to 40 letters, digits, spaces or . _ -: {value!r}")
    return value


def _token(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError("FHIR token must be 1 to 4096 printable ASCII characters without spaces")
    return value


def destinations(config: dict | None) -> dict[str, str]:
    """kind -> where it goes, for people ("PACS@10.0.0.5:104"); nothing for an empty configuration."""
    config = config or {}
    targets = {}
    if "dicom" in config:
        dicom = config["dicom"]
        for kind in dicom["send"]:
            targets[kind] = f"{dicom['ae_title']}@{_host_port(dicom['host'], dicom['port'])}"
    if "hl7" in config:
        targets["hl7"] = f"mllp://{_host_port(config['hl7']['host'], config['hl7']['port'])}"
    if "fhir" in config:
        targets["fhir"] = config["fhir"]["url"]
    return targets


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def shown(config: dict | None) -> dict | None:
    """The configuration for people and the audit log: the FHIR token is never shown."""
    if not config or "fhir" not in config:
        return config
    return config | {"fhir": config["fhir"] | {"token": "(set)" if config["fhir"].get("token") else None}}


def edited(config: dict | None, *, clear: bool = False, dicom: str | None = None, dicom_send: str | None = None,
           hl7: str | None = None, hl7_application: str | None = None, hl7_facility: str | None = None,
           fhir: str | None = None, fhir_token: str | None = None) -> dict | None:
    """A configuration changed as `pneumoscreen departments outbound` says (AE@host:port, host:port, URL), checked."""
    config = {} if clear or not config else {kind: dict(part) for kind, part in config.items()}
    if dicom is not None:
        ae_title, at, address = dicom.rpartition("@")
        if not at:
            raise ValueError(f"--dicom must be AE@host:port, like PACS@10.0.0.5:104: {dicom!r}")
        config["dicom"] = {"ae_title": ae_title, **_address(address, "--dicom"),
                           "send": config.get("dicom", {}).get("send", list(DICOM_KINDS))}
    if dicom_send is not None:
        _part(config, "dicom", "--dicom-send")["send"] = [kind.strip() for kind in dicom_send.split(",")]
    if hl7 is not None:
        config["hl7"] = {**config.get("hl7", {}), **_address(hl7, "--hl7")}
    for key, value, option in (("receiving_application", hl7_application, "--hl7-application"),
                               ("receiving_facility", hl7_facility, "--hl7-facility")):
        if value is not None:
            _part(config, "hl7", option)[key] = value
    if fhir is not None:
        config["fhir"] = {**config.get("fhir", {}), "url": fhir}
    if fhir_token is not None:
        _part(config, "fhir", "--fhir-token-file")["token"] = fhir_token.strip()
    return check_config(config)


def _address(text: str, option: str) -> dict:
    """host:port or [IPv6]:port."""
    host, colon, port = text.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{option} needs host:port, like ris.local:2575: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return {"host": host, "port": int(port)}


def _part(config: dict, kind: str, option: str) -> dict:
    if kind not in config:
        raise ValueError(f"{option}: the department has no {kind} destination yet (set --{kind} too)")
    return config[kind]


def describe(config: dict | None) -> list[str]:
    """One line per destination, for people (never the token)."""
    config = config or {}
    lines = []
    if "dicom" in config:
        dicom = config["dicom"]
        lines.append(f"dicom: {dicom['ae_title']}@{_host_port(dicom['host'], dicom['port'])} "
                     f"(C-STORE of {', '.join(dicom['send'])})")
    if "hl7" in config:
        hl7 = config["hl7"]
        lines.append(f"hl7: mllp://{_host_port(hl7['host'], hl7['port'])} (ORU^R01 to "
                     f"{hl7['receiving_application'] or '-'} at {hl7['receiving_facility'] or '-'})")
    if "fhir" in config:
        token = "bearer token set" if config["fhir"].get("token") else "no token"
        lines.append(f"fhir: {config['fhir']['url']} ({token})")
    return lines or ["no destinations: results stay here"]


def department_named(session: Session, name: str) -> Department:
    department = accounts.department_named(session, name)
    if department is None:
        raise LookupError(f"no department {name!r}")
    return department


def set_config(session: Session, department: Department, config: object, actor_id: int | None, by: str) -> None:
    """Check and store where a department's results go, audited."""
    department.outbound = check_config(config)
    audit(session, actor_id, "department.outbound", "department", department.id, outbound=shown(department.outbound),
          by=by)


# --- the queue -----------------------------------------------------------------------------------------------

def queue_many(session: Session, results: list[StudyResult]) -> list[OutboundMessage]:
    """One pending message per destination kind of each result's department for its current version (never twice:
    checked here, and the unique constraint settles a race); older versions still pending are superseded.

    A fixed number of statements however many results: a worker batch of 32 films for a department with two
    destinations took 267 statements when each result queued its own."""
    results = [result for result in results if result.status in SENT_STATUSES and result.department_id is not None]
    if not results:
        return []
    departments = {department.id: department for department in session.scalars(
        select(Department).where(Department.id.in_({result.department_id for result in results})))}
    targets = {}
    for result in results:
        department = departments.get(result.department_id)
        kinds = destinations(department.outbound if department else None)
        for kind in _nothing_to_send(result):
            kinds.pop(kind, None)
        if kinds:
            targets[result.id] = (result, kinds)
    if not targets:
        return []
    session.flush()  # the results' current versions, which the statements below compare with
    superseded = session.execute(
        update(OutboundMessage).where(OutboundMessage.study_result_id.in_(targets),
                                      OutboundMessage.result_version < _current_version(),
                                      OutboundMessage.state == OutboundState.PENDING)
        .values(state=OutboundState.SUPERSEDED).returning(OutboundMessage.id, OutboundMessage.study_result_id)
        .execution_options(synchronize_session="fetch")).all()
    for message_id, result_id in sorted(superseded):
        audit(session, None, "outbound.superseded", "outbound_message", message_id,
              by_version=targets[result_id][0].version)
    queued = _queued(session, list(targets))
    now = utcnow()
    rows = [dict(study_result_id=result.id, kind=kind, result_version=result.version, destination=destination[:200],
                 state=OutboundState.PENDING, attempts=0, next_attempt_at=now, created_at=now)
            for result, kinds in targets.values() for kind, destination in kinds.items()
            if (result.id, kind) not in queued]
    if not rows:
        return []
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[session.bind.dialect.name]
    written = session.execute(
        dialect.insert(OutboundMessage).values(rows)
        .on_conflict_do_nothing(index_elements=["study_result_id", "kind", "result_version"])
        .returning(OutboundMessage.id, OutboundMessage.study_result_id, OutboundMessage.kind)).all()
    for message_id, result_id, kind in sorted(written):
        result, kinds = targets[result_id]
        audit(session, None, "outbound.queued", "outbound_message", message_id, study_result=result_id,
              kind=kind, version=result.version, status=result.status, destination=kinds[kind])
    if not written:
        return []
    return list(session.scalars(select(OutboundMessage).where(OutboundMessage.id.in_([row[0] for row in written]))
                                .order_by(OutboundMessage.id)))


def _queued(session: Session, result_ids: list[int]) -> set[tuple[int, str]]:
    """(result id, kind) of the messages already written for these results' current versions."""
    return set(map(tuple, session.execute(select(OutboundMessage.study_result_id, OutboundMessage.kind).where(
        OutboundMessage.study_result_id.in_(result_ids), OutboundMessage.result_version == _current_version()))))


def _current_version():
    """The version of a message's result as it stands, for comparing with the message's own."""
    return select(StudyResult.version).where(StudyResult.id == OutboundMessage.study_result_id).scalar_subquery()


def _nothing_to_send(result: StudyResult) -> set[str]:
    if not result.study_instance_uid:  # DICOM objects join the original study: a PNG/JPEG upload has none
        return set(DICOM_KINDS)
    if result.decided_by_image_id is None:  # the secondary capture shows the deciding film: there is none
        return {"sc"}
    return set()


def messages(session: Session, state: str | None = None, limit: int = 50) -> list[OutboundMessage]:
    """The newest messages first, optionally in one state (`pneumoscreen outbound list`)."""
    query = select(OutboundMessage).order_by(OutboundMessage.id.desc()).limit(limit)
    if state:
        query = query.where(OutboundMessage.state == state)
    return list(session.scalars(query))


def retry(session: Session, message_id: int, actor_id: int | None, by: str,
          now: datetime | None = None) -> OutboundMessage:
    """Send a failed message again, with a fresh set of attempts; LookupError or ValueError says why not."""
    message = session.scalars(select(OutboundMessage).where(OutboundMessage.id == message_id)
                              .with_for_update()).one_or_none()
    if message is None:
        raise LookupError(f"no outbound message {message_id}")
    if message.state != OutboundState.FAILED:
        raise ValueError(f"message {message_id} is {message.state}: only failed messages are sent again")
    current = message.study_result.version
    if current > message.result_version:
        raise ValueError(f"message {message_id} is for version {message.result_version} of the result, which is "
                         f"now at version {current}: retry that version's message instead")
    # /metrics counts attempts from the rows: the ones this reset forgets are kept as a stored count.
    counters.increment(session, "pneumoscreen_outbound_attempts_total", {"kind": message.kind}, by=message.attempts)
    message.state, message.attempts, message.next_attempt_at = OutboundState.PENDING, 0, now or utcnow()
    audit(session, actor_id, "outbound.retry", "outbound_message", message.id, by=by, last_error=message.last_error)
    return message
