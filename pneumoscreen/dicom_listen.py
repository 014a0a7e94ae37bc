"""DICOM network receive: a C-ECHO / C-STORE SCP that gathers instances by study and queues each study.

A study counts as complete when no instance of it has arrived for `quiet_s` seconds; it then
becomes one batch through the same intake as uploads (studies.intake.submit_batch).
Patient name and id are never logged: only UIDs and the calling AE title.
"""
import logging
import threading
import time
from dataclasses import dataclass, field

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from core.services import Services
from db.accounts import create_user
from db.models import User
from studies.files import Item, expand
from studies.intake import submit_batch

logger = logging.getLogger(__name__)

LISTENER_USER = "dicom-listener"
SUCCESS, CANNOT_UNDERSTAND, NOT_SUPPORTED, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA900, 0xA700


@dataclass
class _Pending:
    items: list[Item] = field(default_factory=list)
    last: float = 0.0
    calling: str = ""


class Listener:
    """The SCP and the quiet-time flusher; `start(block=False)` for tests, `start()` for the CLI."""

    def __init__(self, services: Services, ae_title: str = "PNEUMOSCREEN", port: int = 11112, host: str = "0.0.0.0",
                 quiet_s: float | None = None):
        self.services, self.address = services, (host, port)
        self.quiet_s = services.settings.dicom_quiet_s if quiet_s is None else quiet_s
        self.pending: dict[str, _Pending] = {}
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.user_id = listener_user(services)
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)
        # Every storage SOP class (CR, DX, CT...): out-of-scope modalities are stored and flagged, not refused.
        for context in _storage_contexts():
            self.ae.add_supported_context(context, ALL_TRANSFER_SYNTAXES)
        self.server = None

    def start(self, block: bool = True) -> None:
        """Serve associations; flush quiet studies in a background thread."""
        threading.Thread(target=self._flush_loop, name="dicom-flush", daemon=True).start()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        logger.info("DICOM listener %s on %s:%d (study complete after %ss quiet)",
                    self.ae.ae_title, *self.address, self.quiet_s)
        if block:
            try:
                self.ae.start_server(self.address, evt_handlers=handlers, block=True)
            finally:
                self.stop()
        else:
            self.server = self.ae.start_server(self.address, evt_handlers=handlers, block=False)

    def stop(self) -> None:
        """Stop accepting, then queue what has arrived so nothing received is lost."""
        server, self.server = self.server, None  # stop() may run twice (test teardown, Ctrl-C)
        if server is not None:
            server.shutdown()
        self.stopped.set()
        self.flush(force=True)

    def _on_store(self, event) -> int:
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # a data set pynetdicom cannot re-encode
            logger.warning("C-STORE from %s: cannot encode data set: %s", event.assoc.requestor.ae_title, exc)
            return CANNOT_UNDERSTAND
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        item = next(expand(f"dicom/{sop_uid}.dcm", data))
        if item.error:
            logger.info("C-STORE %s refused: %s", sop_uid, item.error)
            return NOT_SUPPORTED
        study_uid = (item.meta.study_instance_uid if item.meta else None) or sop_uid
        with self.lock:
            pending = self.pending.setdefault(study_uid, _Pending(calling=event.assoc.requestor.ae_title))
            pending.items.append(item)
            pending.last = time.monotonic()
        return SUCCESS

    def _flush_loop(self) -> None:
        while not self.stopped.wait(min(1.0, self.quiet_s / 2)):
            try:
                self.flush()
            except Exception:  # keep listening: the study stays pending and is tried again
                logger.exception("queueing received DICOM studies failed; will retry")

    def flush(self, force: bool = False) -> list[int]:
        """Queue every study quiet for `quiet_s` (all of them when `force`); returns the batch ids."""
        now = time.monotonic()
        with self.lock:
            ready = [uid for uid, p in self.pending.items() if force or now - p.last >= self.quiet_s]
            studies = [(uid, self.pending.pop(uid)) for uid in ready]
        batch_ids = []
        for study_uid, pending in studies:
            batch, _ = submit_batch(self.services, pending.items, self.user_id, "dicom")
            logger.info("DICOM study %s from %s: %d instances queued as batch %s", study_uid, pending.calling,
                        len(pending.items), batch.id)
            batch_ids.append(batch.id)
        return batch_ids


def listener_user(services: Services) -> int:
    """The account batches received over DICOM belong to (an uploader without a password)."""
    with services.sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.username == LISTENER_USER))
        if user_id is None:
            user_id = create_user(session, LISTENER_USER, "uploader", None).id
    return user_id


def _storage_contexts():
    from pynetdicom import StoragePresentationContexts

    return [context.abstract_syntax for context in StoragePresentationContexts]
