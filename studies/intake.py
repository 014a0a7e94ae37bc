"""Accept what was handed over as a batch: store each good file, record its study, queue the new ones."""
import dataclasses
import logging
import os
from datetime import datetime
from typing import Iterable, Iterator

from sqlalchemy.orm import Session

from core.services import Services
from db.models import Batch, StudyStatus, User, utcnow
from db.session import audit
from models.dicom import DicomMeta, deidentify, is_dicom
from models.limits import ImageDecodeError
from studies.duplicates import link_duplicates
from studies.files import Item, expand
from studies.rejections import record_rejections
from studies.results import add_images, refresh_many

logger = logging.getLogger(__name__)
# What a study keeps of its DICOM header, by the names of DicomMeta and the study columns; never patient name or id.
DICOM_COLUMNS = tuple(field.name for field in dataclasses.fields(DicomMeta))
# department_id when the caller has not looked it up: the uploader's, read with the batch.
UPLOADERS = object()
# Films in one batch (one request, one DICOM study): bounds what one upload costs the queue and reviewers.
MAX_STUDIES = 5000


def submit_uploads(services: Services, uploads: Iterable[tuple[str, bytes]], user_id: int, source: str,
                   department_id: int | None | object = UPLOADERS) -> tuple[Batch | None, list[dict], int]:
    """Expand uploaded files and zips, then submit them; returns (batch, rejected, accepted count), the batch None
    only when nothing was handed over. `department_id`: the uploader's (None: none), when the caller has it at hand.

    One file or zip member at a time, from reading to storage: memory holds one member, never all of them.
    """
    handed_over = 0

    def items() -> Iterator[Item]:
        nonlocal handed_over
        for name, data in uploads:
            for item in expand(name, data, services.settings.routing_rules):
                handed_over += 1
                yield item

    batch, rejected = submit_batch(services, items(), user_id, source, department_id)
    return batch, rejected, handed_over - len(rejected)


def submit_batch(services: Services, items: Iterable[Item], user_id: int, source: str,
                 department_id: int | None | object = UPLOADERS,
                 sender: dict | None = None) -> tuple[Batch | None, list[dict]]:
    """Create a batch of the good items and queue it, the refused ones recorded on it with their reasons;
    returns (batch, rejected items), or (None, []) when nothing was handed over.

    Files are stored, recorded and queued one worker batch at a time as they come: screening starts while the
    rest of a large upload is still being taken in, and no transaction holds the database (SQLite: the whole
    file) for long. The batch is `receiving` until its last file is in. A chunk lost to a crash before it was
    queued is re-queued by the sweeper; its rows are already `queued`.

    The batch belongs to the uploader's department unless `department_id` says otherwise (the DICOM
    listener files each caller's studies under its own department); `sender` goes into the audit entry.
    """
    chunk_size = services.settings.batch_size
    rejected, pending, accepted = [], [], 0
    batch_id = None

    def batch_in(session: Session, last: bool = False) -> Batch:  # opened with the first chunk written
        if batch_id:
            return session.get(Batch, batch_id)
        return _new_batch(session, user_id, source, department_id, received_at=utcnow() if last else None)

    for item in items:
        if item.error:
            rejected.append({"filename": item.name, "error": item.error})
            continue
        if accepted >= MAX_STUDIES:
            rejected.append({"filename": item.name, "error": f"over {MAX_STUDIES} films in one batch: send the "
                                                             "rest in another upload"})
            continue
        try:
            key, digest = store_original(services, item)
        except ImageDecodeError as exc:  # never stored as received when it cannot be de-identified
            rejected.append({"filename": item.name, "error": str(exc)})
            continue
        # The bytes are in storage now: not kept here.
        pending.append((item.name, item.meta, key, digest, item.not_applicable))
        accepted += 1
        if len(pending) == chunk_size:  # a full chunk: recorded and queued now, the upload goes on
            with services.sessions.begin() as session:
                batch = batch_in(session)
                batch_id, queued = batch.id, _add_studies(session, batch, pending)
            services.enqueue(queued)
            pending = []
    if batch_id is None and not pending and not rejected:
        return None, rejected
    # The last chunk and the batch's closing in one transaction (a small upload: its only one). A batch whose
    # every file was refused is still recorded: the uploader sees what was refused and why.
    with services.sessions.begin() as session:
        batch = batch_in(session, last=True)
        queued = _add_studies(session, batch, pending)
        if batch.received_at is None:  # opened by an earlier chunk
            batch.received_at = utcnow()
        audit(session, user_id, "batch.upload", "batch", batch.id, studies=accepted,
              rejected=len(rejected), source=source, **(sender or {}))
        record_rejections(session, batch.id, rejected)
    services.enqueue(queued)
    return batch, rejected


def _new_batch(session: Session, user_id: int, source: str, department_id: int | None | object,
               received_at: datetime | None) -> Batch:
    """A new batch, `receiving` until `received_at`; in the department given, else in the uploader's."""
    if department_id is UPLOADERS:
        uploader = session.get(User, user_id)
        department_id = uploader.department_id if uploader is not None else None
    batch = Batch(created_by=user_id, source=source, department_id=department_id, received_at=received_at)
    session.add(batch)
    session.flush()
    return batch


def _add_studies(session: Session, batch: Batch, entries: list[tuple]) -> list[int]:
    """Study rows for stored files, with their results and duplicates; returns the ids to queue."""
    if not entries:
        return []
    studies = add_images(session, batch, [_study_row(batch.id, *entry) for entry in entries])
    screened = [study for study in studies if study.not_applicable is None]  # ignored: never queued
    held = link_duplicates(session, batch, screened)  # same content as an earlier study: no second inference
    # A film without a StudyInstanceUID got a result of its own just now; while the film waits in the queue that
    # result is as made (registered, pending): only the others can have changed.
    refresh_many(session, {study.study_result_id for study in studies
                           if study.study_instance_uid or study.status != StudyStatus.QUEUED or study.id in held})
    return [study.id for study in screened if study.id not in held]


def store_original(services: Services, item: Item) -> tuple[str, str]:
    """Store an accepted file; returns (storage key, sha256 of the stored bytes). DICOM is stored de-identified
    (PNEUMOSCREEN_DEIDENTIFY, on by default; deterministic, so an identical instance sent again gets the same key
    and is found as a duplicate); ImageDecodeError when it cannot be. The file's time is set to now, even when the
    content was stored before: a purge (studies/retention.py) never deletes content handed over again recently."""
    data = item.data
    if services.settings.deidentify and is_dicom(data):
        data = deidentify(data)
    key, digest = services.storage.put_original(data)
    try:
        os.utime(services.storage.path(key))
    except FileNotFoundError:  # purged in between: store it again
        key, digest = services.storage.put_original(data)
    return key, digest


def _study_row(batch_id: int, name: str, meta: DicomMeta | None, key: str, digest: str,
               not_applicable: str | None = None) -> dict:
    """The columns of a new study; every row has the same keys, so a chunk goes in as one INSERT."""
    row = dict(batch_id=batch_id, filename=name[:512], storage_key=key, content_sha256=digest,
               status=StudyStatus.QUEUED, finished_at=None, not_applicable=not_applicable,
               **dict.fromkeys(DICOM_COLUMNS))
    if not_applicable is not None:  # accepted and ignored (studies/applicability.py): done, never screened
        row.update(status=StudyStatus.DONE, finished_at=utcnow())
    if meta is not None:
        row.update(dataclasses.asdict(meta))
    return row
