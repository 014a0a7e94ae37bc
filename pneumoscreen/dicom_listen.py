"""DICOM network receive: a C-ECHO / C-STORE SCP that gathers instances by study and queues each study.

Each instance is kept (file in storage, row in `dicom_pending`) before it is acknowledged, so a
success answer is never lost, whatever happens to the listener after it; when it cannot be kept the
sender hears "out of resources" and sends again. A study counts as complete when no instance of it
has arrived for `quiet_s` seconds; it then becomes one batch through the same intake as uploads
(studies.intake.submit_batch). A listener that starts again queues what an earlier one kept.
Patient name and id are never logged: only UIDs and the calling AE title.
"""
import logging
import ssl
import threading
from datetime import timedelta
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import delete, func, select

from core.services import Services
from core.settings import DicomCaller
from db import counters
from db.accounts import create_user, ensure_department
from db.models import DicomPending, User, utcnow
from db.session import audit
from models.limits import ImageDecodeError
from studies.applicability import error_comment, listener_sop_classes
from studies.files import MAX_FILE_BYTES, Item, expand
from studies.intake import store_original, submit_batch

logger = logging.getLogger(__name__)

LISTENER_USER = "dicom-listener"
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
MAX_ASSOCIATIONS, MAX_ASSOCIATIONS_PER_ADDRESS, IDLE_TIMEOUT_S = 32, 4, 20
# Instances read into memory at once (each at most studies.files.MAX_FILE_BYTES): the listener's memory cap.
IN_MEMORY = 2
# pynetdicom accepts, for each proposed context, the first syntax of this list the sender proposes: lossless
# first (uncompressed, then lossless compression), lossy JPEG only when a sender offers nothing else.
LOSSLESS_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGLosslessSV1,
                     JPEGLossless, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless, HTJ2KLosslessRPCL, RLELossless,
                     ExplicitVRBigEndian]
PREFERRED_SYNTAXES = LOSSLESS_SYNTAXES + [syntax for syntax in ALL_TRANSFER_SYNTAXES if syntax not in LOSSLESS_SYNTAXES]
# Received instances go to a temporary file as they arrive, not into memory (pynetdicom's chunked receive).
_config.STORE_RECV_CHUNKED_DATASET = True


class Listener:
    """The SCP and the quiet-time flusher; `start(block=False)` for tests, `start()` for the CLI.

    Only callers on the allow-list (PNEUMOSCREEN_DICOM_CALLERS) are accepted, each from its listed addresses
    when it has some; everything else is rejected at association and audited. Each caller's studies land in
    its own department.
    """

    def __init__(self, services: Services, ae_title: str = "PNEUMOSCREEN", port: int = 11112,
                 host: str = "127.0.0.1", quiet_s: float | None = None,
                 callers: tuple[DicomCaller, ...] | None = None, ssl_context: ssl.SSLContext | None = None):
        callers = services.settings.dicom_callers if callers is None else callers
        if not callers:
            raise ValueError("no DICOM caller is allowed: list them in PNEUMOSCREEN_DICOM_CALLERS "
                             "(AE=Department[@address,...];...)")
        self.services, self.address, self.ssl_context = services, (host, port), ssl_context
        self.quiet_s = services.settings.dicom_quiet_s if quiet_s is None else quiet_s
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.reading = threading.BoundedSemaphore(IN_MEMORY)
        self.user_id = listener_user(services)
        self.callers = {caller.ae_title: (caller, department_id(services, caller.department)) for caller in callers}
        self.ae = AE(ae_title=ae_title)
        # Idle or slow associations are dropped quickly, and one address holds at most a few of them
        # (_on_request), so a stuck or hostile sender cannot take every slot from the PACS.
        self.ae.maximum_associations = MAX_ASSOCIATIONS
        self.ae.network_timeout = self.ae.acse_timeout = IDLE_TIMEOUT_S
        self.ae.add_supported_context(Verification)
        # Every storage SOP class (CR, DX, CT, SR...): what is not a chest film is accepted and ignored, not refused
        # (a refusal makes a PACS send again); the routing rules decide per instance (studies/applicability.py).
        self.rules = services.settings.routing_rules
        for sop_class in listener_sop_classes(self.rules):
            self.ae.add_supported_context(sop_class, PREFERRED_SYNTAXES)
        self.server = None

    def start(self, block: bool = True) -> None:
        """Serve associations; flush quiet studies in a background thread."""
        threading.Thread(target=self._flush_loop, name="dicom-flush", daemon=True).start()
        handlers = [(evt.EVT_REQUESTED, self._on_request), (evt.EVT_C_STORE, self._counted_store),
                    (evt.EVT_ACCEPTED, lambda event: self._count_association("accepted", "")),
                    (evt.EVT_REJECTED, lambda event: self._count_association("rejected", "too_many_associations")),
                    (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        logger.info("DICOM listener %s on %s:%d%s for %s (study complete after %ss quiet)", self.ae.ae_title,
                    *self.address, " with TLS" if self.ssl_context else "", ", ".join(self.callers), self.quiet_s)
        server_args = {"evt_handlers": handlers, "ssl_context": self.ssl_context}
        if block:
            try:
                self.ae.start_server(self.address, block=True, **server_args)
            finally:
                self.stop()
        else:
            self.server = self.ae.start_server(self.address, block=False, **server_args)

    def stop(self) -> None:
        """Stop accepting, then queue what has arrived so nothing received is lost."""
        server, self.server = self.server, None  # stop() may run twice (test teardown, Ctrl-C)
        if server is not None:
            server.shutdown()
        self.stopped.set()
        self.flush(force=True)

    def _on_request(self, event) -> None:
        """Reject, before anything is sent, a caller not on the allow-list or not from its addresses."""
        calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        address = str(event.assoc.requestor.address)
        known = self.callers.get(calling)
        if known is not None and (not known[0].addresses or address in known[0].addresses):
            if self._associations_from(address) > MAX_ASSOCIATIONS_PER_ADDRESS:
                logger.warning("DICOM association from %s at %s refused for now: %d open from that address",
                               calling, address, MAX_ASSOCIATIONS_PER_ADDRESS)
                self._count_association("rejected", "too_many_from_address")
                event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, local limit exceeded: try later
                event.assoc.kill()
            return
        logger.warning("DICOM association from %s at %s rejected: not an allowed caller", calling, address)
        with self.services.sessions.begin() as session:
            audit(session, None, "dicom.rejected", "dicom", None, calling_ae=calling[:16], address=address)
            counters.increment(session, counters.DICOM_ASSOCIATIONS, {"outcome": "rejected", "reason": "not_allowed"})
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
        event.assoc.kill()  # as pynetdicom's own rejection does: the reject is sent before the socket closes

    def _associations_from(self, address: str) -> int:
        """Open associations from `address`, the one being negotiated included."""
        return sum(1 for assoc in self.ae.active_associations if str(assoc.requestor.address) == address)

    def _count_association(self, outcome: str, reason: str) -> None:
        counters.record(self.services.sessions, counters.DICOM_ASSOCIATIONS, {"outcome": outcome, "reason": reason})

    def _counted_store(self, event) -> int | Dataset:
        """Answer the C-STORE; a refusal is counted here, what is kept in _keep's transaction."""
        status = self._on_store(event)
        code = int(getattr(status, "Status", status))  # a refusal with a reason is a Dataset (_status)
        if code != SUCCESS:
            counters.record(self.services.sessions, counters.DICOM_INSTANCES,
                            {"via": "c-store", "outcome": "refused", "status": f"0x{code:04X}"})
        return status

    def _on_store(self, event) -> int | Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        # pynetdicom wrote the instance to a temporary file as it arrived (chunked receive): nothing of it is in
        # memory until here, and at most IN_MEMORY instances are read at once, whatever the associations.
        path = event.dataset_path
        if path.stat().st_size > MAX_FILE_BYTES:
            logger.info("C-STORE %s from %s refused: %d MB", sop_uid, calling, path.stat().st_size // 2**20)
            return OUT_OF_RESOURCES
        with self.reading:
            item = next(expand(f"dicom/{sop_uid}.dcm", path.read_bytes(), self.rules))
            if item.error:
                logger.info("C-STORE %s refused: %s", sop_uid, item.error)
                return _status(item.dicom_status or CANNOT_UNDERSTAND, item.error)
            if item.not_applicable:  # kept and answered success like any instance; never screened
                logger.info("C-STORE %s from %s accepted, not screened: %s", sop_uid, calling, item.not_applicable)
            return self._keep(event, calling, sop_uid, item)

    def _keep(self, event, calling: str, sop_uid: str, item: Item) -> int:
        """Kept before it is acknowledged: the file in storage and a row saying it waits for its study.
        Whatever fails here, the sender hears a failure and sends again; a success is never lost."""
        study_uid = (item.meta.study_instance_uid if item.meta else None) or sop_uid
        try:
            key, _ = store_original(self.services, item)  # de-identified (PNEUMOSCREEN_DEIDENTIFY)
            with self.services.sessions.begin() as session:
                session.add(DicomPending(calling_ae=calling[:16], address=str(event.assoc.requestor.address)[:64],
                                         study_uid=study_uid[:64], filename=item.name[:512], storage_key=key))
                outcome = "ignored" if item.not_applicable else "stored"  # ignored: accepted, never screened
                counters.count_instances(session, "c-store", outcome, SUCCESS)
        except ImageDecodeError as exc:  # cannot be de-identified: refused, never kept as received
            logger.info("C-STORE %s refused: %s", sop_uid, exc)
            return CANNOT_UNDERSTAND
        except Exception:  # disk full, database locked or down: refuse this instance, not the listener
            logger.exception("C-STORE %s from %s could not be kept; answered out of resources", sop_uid, calling)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _flush_loop(self) -> None:
        while not self.stopped.wait(min(1.0, self.quiet_s / 2)):
            try:
                self.flush()
            except Exception:  # keep listening: the study stays pending and is tried again
                logger.exception("queueing received DICOM studies failed; will retry")

    def flush(self, force: bool = False) -> list[int]:
        """Queue every study quiet for `quiet_s` (all of them when `force`), also those kept before a restart;
        returns the batch ids. A study's rows go only once its batch exists."""
        quiet_since = utcnow() - timedelta(seconds=0 if force else self.quiet_s)
        with self.lock, self.services.sessions() as session:
            ready = session.execute(
                select(DicomPending.calling_ae, DicomPending.study_uid).group_by(
                    DicomPending.calling_ae, DicomPending.study_uid)
                .having(func.max(DicomPending.received_at) <= quiet_since)).all()
        batch_ids = []
        for calling, study_uid in ready:
            batch_ids.append(self._queue_study(calling, study_uid))
        return [batch_id for batch_id in batch_ids if batch_id is not None]

    def _queue_study(self, calling: str, study_uid: str) -> int | None:
        with self.services.sessions() as session:
            rows = session.scalars(select(DicomPending).where(
                DicomPending.calling_ae == calling, DicomPending.study_uid == study_uid)
                .order_by(DicomPending.id)).all()
        items = [item for row in rows
                 for item in expand(row.filename, self.services.storage.get(row.storage_key), self.rules)]
        known = self.callers.get(calling)
        department = known[1] if known else department_id(self.services, "DICOM (caller no longer listed)")
        batch, _ = submit_batch(self.services, items, self.user_id, "dicom", department_id=department,
                                sender={"calling_ae": calling, "address": rows[0].address})
        with self.services.sessions.begin() as session:
            session.execute(delete(DicomPending).where(DicomPending.id.in_([row.id for row in rows])))
        logger.info("DICOM study %s from %s: %d instances queued as batch %s", study_uid, calling, len(items),
                    batch.id if batch else None)
        return batch.id if batch else None


def _status(status: int, reason: str) -> Dataset:
    """A C-STORE failure with its reason in ErrorComment, for the sender's log."""
    answer = Dataset()
    answer.Status, answer.ErrorComment = status, error_comment(reason)
    return answer


def department_id(services: Services, name: str) -> int:
    """The department a caller's studies land in, made when new."""
    with services.sessions.begin() as session:
        return ensure_department(session, name).id


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for DICOM (PS3.15 B.1 style): our certificate, and callers' certificates checked when a CA is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def listener_user(services: Services) -> int:
    """The account batches received over DICOM belong to (an uploader without a password)."""
    with services.sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.username == LISTENER_USER))
        if user_id is None:
            user_id = create_user(session, LISTENER_USER, "uploader", None).id
    return user_id

