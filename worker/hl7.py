"""A study result as an HL7 v2.5.1 ORU^R01 message, sent over MLLP to the RIS and acknowledged.

python-hl7 (`hl7`) does the HL7 parts that are easy to get wrong: escaping the delimiters in any text we put in
(`Message.escape`: | ^ ~ \\ & and line ends) and parsing what the RIS answers. We write the segments
ourselves, field by field, because they are few and fixed (hl7apy can build them from its v2.5.1 tables, but its
escaping works only through datatype objects and leaves escape sequences already in a text alone). The MLLP
exchange is a plain socket with a timeout (python-hl7's blocking client has none and reads one recv only).

No patient name or id: the service never keeps them. The accession number names the order (PID-3 as an
accession id, ORC-2/3 and OBR-2/3 as placer and filler order numbers); OBX segments carry the study's
StudyInstanceUID, the call (SNOMED CT), the probability, the threshold, the model version, the flag reasons and
the reviewer's decision.
"""
import logging
import re
import socket
from datetime import datetime

import hl7

from db.models import ReportStatus, StudyResult, as_utc
from studies.results import CALL_CODES

logger = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"  # MLLP framing: VT ... FS CR
MAX_ACK_BYTES = 64 * 1024  # a RIS's ACK is a few hundred bytes; a peer that streams more is not a RIS
# OBR-25 / OBX-11 result status (HL7 table 0123 / 0085).
RESULT_STATUS = {ReportStatus.PRELIMINARY: "P", ReportStatus.FINAL: "F", ReportStatus.AMENDED: "C",
                 ReportStatus.CORRECTED: "C", ReportStatus.CANCELLED: "X"}
CALLS = {call: f"{code}^{display}^SCT" for call, (code, display) in CALL_CODES.items()}
DECISIONS = {"pneumonia": CALLS["PNEUMONIA"], "normal": CALLS["NORMAL"], "unreadable": "unreadable^Unreadable^L"}
_SEPARATORS = hl7.parse("MSH|^~\\&|PNEUMOSCREEN")  # what Message.escape needs to know the delimiters


class AckError(Exception):
    """The RIS did not accept the message (no answer, an AE/AR answer, or something that is not an ACK)."""


def text(value: object, limit: int = 200) -> str:
    """Any text made safe for a field: control characters become spaces, non-ASCII '?', delimiters escaped."""
    plain = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value))[:limit].encode("ascii", "replace").decode()
    return _SEPARATORS.escape(plain) if plain else ""


def _hl7_time(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y%m%d%H%M%S+0000")


def oru_r01(result: StudyResult, department: str, reasons: list[str], config: dict, control_id: str,
            now: datetime) -> str:
    """The ORU^R01 message for the result as it stands (segments separated by CR)."""
    status = RESULT_STATUS[result.status]
    accession = text(result.accession_number or f"PS{result.id}", 16)
    observed = _hl7_time(result.acquired_at) if result.acquired_at else text(result.study_date or "", 8)
    segments = [
        ["MSH", "^~\\&", "PNEUMOSCREEN", text(department, 40), text(config.get("receiving_application", ""), 40),
         text(config.get("receiving_facility", ""), 40), _hl7_time(now), "", "ORU^R01^ORU_R01", control_id, "P",
         "2.5.1"],
        ["PID", "1", "", f"{accession}^^^{text(department, 40)}^ACSN"],
        ["ORC", "RE", accession, accession, "", "CA" if status == "X" else "CM"],
        ["OBR", "1", accession, accession, "18748-4^Diagnostic imaging study^LN", "", "", observed]
        + [""] * 14 + [_hl7_time(result.updated_at), "", "", status],
    ]
    observations = [("ST", "110180^Study Instance UID^DCM", text(result.study_instance_uid or "", 64)),
                    ("ST", "scope^Screening scope^L", text(result.scope, 24))]
    if result.call is not None and result.probability is not None and result.threshold is not None:
        observations += [("CWE", "pneumonia-call^Pneumonia screening call^L",
                          CALLS.get(result.call, f"{text(result.call, 16)}^^L")),
                         ("NM", "pneumonia-probability^Pneumonia probability (screening model)^L",
                          f"{result.probability:.4f}"),
                         ("NM", "call-threshold^Call threshold^L", f"{result.threshold:.4f}")]
    if result.model_version:
        observations.append(("ST", "model-version^Screening model version^L", text(result.model_version, 80)))
    if reasons:
        observations.append(("ST", "flag-reasons^Flagged for review because^L", text(", ".join(reasons))))
    if result.review_decision:
        observations.append(("CWE", "review-decision^Radiologist review decision^L",
                             DECISIONS.get(result.review_decision, f"{text(result.review_decision, 16)}^^L")))
    for number, (value_type, code, value) in enumerate(observations, start=1):
        segments.append(["OBX", str(number), value_type, code, "", value, "", "", "", "", "", status, "", "",
                         _hl7_time(result.updated_at)])
    return "\r".join("|".join(fields) for fields in segments) + "\r"


def send_mllp(host: str, port: int, message: str, control_id: str, timeout: float) -> None:
    """Send one message and wait for its ACK: MSA-1 AA or CA is accepted; anything else raises AckError."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(START + message.encode("ascii") + END)
            answer = _read_frame(connection)
    except socket.timeout:
        raise AckError(f"no ACK from {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise AckError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    _check_ack(answer, control_id)


def _read_frame(connection: socket.socket) -> bytes:
    received = b""
    while END not in received:
        chunk = connection.recv(4096)
        if not chunk:
            raise AckError("the RIS closed the connection without an ACK")
        received += chunk
        if len(received) > MAX_ACK_BYTES:
            raise AckError(f"the RIS answered more than {MAX_ACK_BYTES} bytes without ending the frame")
    start = received.find(START)
    return received[start + 1 if start >= 0 else 0:received.index(END)]


def _check_ack(answer: bytes, control_id: str) -> None:
    try:
        msa = hl7.parse(answer.decode("latin-1")).segment("MSA")
        code, acked, reason = (str(msa[n]) if len(msa) > n else "" for n in (1, 2, 3))
    except Exception:  # python-hl7 raises several kinds on a malformed message; all mean "not an ACK"
        raise AckError(f"the answer is not an HL7 ACK: {answer[:80]!r}") from None
    if acked and acked != control_id:
        raise AckError(f"the ACK is for message {acked[:20]!r}, not {control_id!r}")
    if code not in ("AA", "CA"):
        raise AckError(f"the RIS answered {code[:2]!r}" + (f": {reason[:200]}" if reason else ""))
