"""Send DICOM objects (a study result's SR and Secondary Capture) to a PACS by C-STORE, over one association.

Success means every instance was answered with a success or a warning status: warnings (0xB000-0xBFFF,
0x0001, 0x0107, 0x0116: coerced attributes, elements discarded) mean the PACS kept the instance. Anything else
(association rejected or aborted, no answer within the timeouts, a failure status) raises DeliveryError with a
reason a person can act on; the caller (the outbound queue) decides whether to try again.
"""
import logging
import time

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from core.settings import is_ae_title

logger = logging.getLogger(__name__)

CALLING_AE = "PNEUMOSCREEN"
CONNECT_TIMEOUT_S, TIMEOUT_S = 10, 20


class DeliveryError(Exception):
    """The destination did not take every instance; the message says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def c_store(destination: dict, datasets: list[Dataset]) -> None:
    """Store every data set at `destination` ({"ae_title", "host", "port", optional "calling_ae"}) or raise."""
    called, host, port, calling = _checked(destination)
    where = f"{called}@{host}:{port}"
    if not datasets:
        return
    ae = AE(ae_title=calling)
    ae.connection_timeout = CONNECT_TIMEOUT_S
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    started = time.monotonic()
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise DeliveryError(f"{where}: {_refusal(assoc, time.monotonic() - started)}")
    try:
        for ds in datasets:
            _store(assoc, ds, where)
    except Exception:  # a refused instance, a timeout, a data set that cannot be encoded: nothing half-done stays open
        assoc.abort()
        raise
    assoc.release()
    logger.info("stored %d instances at %s", len(datasets), where)


def _checked(destination: dict) -> tuple[str, str, int, str]:
    """The destination's called AE, host, port and our calling AE; DeliveryError names what is wrong."""
    called = str(destination.get("ae_title") or "").strip()
    calling = str(destination.get("calling_ae") or CALLING_AE).strip()
    host, port = str(destination.get("host") or "").strip(), destination.get("port")
    problems = []
    for label, title in (("ae_title", called), ("calling_ae", calling)):
        if not is_ae_title(title):
            problems.append(f"{label} must be 1-16 printable ASCII characters without a backslash, not {title!r}")
    if not host:
        problems.append("no host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"port must be a number from 1 to 65535, not {port!r}")
    if problems:
        raise DeliveryError("bad DICOM destination: " + "; ".join(problems))
    return called, host, port, calling


def _refusal(assoc, waited_s: float) -> str:
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        return (f"association rejected ({answer.result_str}, by the {answer.source_str.lower()}: "
                f"{answer.reason_str}); check that our AE title is known there")
    if waited_s >= min(TIMEOUT_S, CONNECT_TIMEOUT_S):
        return f"no association: no answer within {waited_s:.0f} s"
    return "no association: nothing listening there, or the peer dropped the connection"


def _store(assoc, ds: Dataset, where: str) -> None:
    what = f"{UID(str(ds.SOPClassUID)).name} {ds.SOPInstanceUID}"
    if not any(cx.abstract_syntax == ds.SOPClassUID for cx in assoc.accepted_contexts):
        raise DeliveryError(f"{where} does not accept {UID(str(ds.SOPClassUID)).name} (presentation context refused)")
    status = assoc.send_c_store(ds)
    if "Status" not in status:  # pynetdicom's empty answer: timed out, aborted or garbled
        raise DeliveryError(f"{where}: no answer to C-STORE of {what} within {TIMEOUT_S} s, or the peer aborted")
    code, category = int(status.Status), code_to_category(int(status.Status))
    comment = str(status.get("ErrorComment", "") or "")
    if category == "Warning":
        logger.warning("%s kept %s with warning 0x%04X %s", where, what, code, comment)
    elif category != "Success":
        detail = f": {comment}" if comment else ""
        raise DeliveryError(f"{where} refused {what}: status 0x{code:04X} ({category}){detail}")
