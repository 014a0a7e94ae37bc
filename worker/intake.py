"""Accept a set of uploaded images as a batch: store each file, record studies, queue them in chunks."""
import logging
from typing import Iterable

from db.models import Batch, Study, User
from db.session import audit
from pneumoscreen.inputs import Item
from worker.duplicates import link_duplicates

logger = logging.getLogger(__name__)
SCREEN_TASK = "pneumoscreen.screen_studies"


def submit_batch(services, items: Iterable[Item], user_id: int, source: str) -> tuple[Batch | None, list[dict]]:
    """Create a batch of the good items and queue it; returns (batch or None, rejected items)."""
    rejected, accepted = [], []
    for item in items:
        if item.error:
            rejected.append({"filename": item.name, "error": item.error})
            continue
        key, digest = services.storage.put_original(item.data)
        accepted.append((item.name, key, digest, item.meta or {}))
    if not accepted:
        return None, rejected
    with services.sessions.begin() as session:
        uploader = session.get(User, user_id)
        batch = Batch(created_by=user_id, source=source,
                      department_id=uploader.department_id if uploader else None)
        session.add(batch)
        session.flush()
        studies = [Study(batch_id=batch.id, filename=name[:512], storage_key=key, content_sha256=digest, **meta)
                   for name, key, digest, meta in accepted]
        session.add_all(studies)
        session.flush()
        held = link_duplicates(session, studies)  # same content as an earlier study: no second inference
        study_ids = [study.id for study in studies if study.id not in held]
        audit(session, user_id, "batch.upload", "batch", batch.id, studies=len(studies),
              rejected=len(rejected), source=source)
    enqueue_studies(services, study_ids)
    return batch, rejected


def enqueue_studies(services, study_ids: list[int]) -> None:
    """Queue ids in chunks of the batch size: one task, one model run per chunk."""
    size = services.settings.batch_size
    for start in range(0, len(study_ids), size):
        services.celery.send_task(SCREEN_TASK, args=[study_ids[start:start + size]])
