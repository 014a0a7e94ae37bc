"""Accept a set of uploaded images as a batch: store each file, record studies, queue them in chunks."""
import logging
from typing import Iterable

from sqlalchemy.orm import Session, sessionmaker

from db.models import Batch, Study
from db.session import audit
from pneumoscreen.inputs import Item
from pneumoscreen.storage import Storage

logger = logging.getLogger(__name__)


def submit_batch(sessions: sessionmaker[Session], storage: Storage, items: Iterable[Item],
                 user_id: int, source: str, batch_size: int) -> tuple[Batch | None, list[dict]]:
    """Create a batch of the good items and queue it; returns (batch or None, rejected items)."""
    rejected, accepted = [], []
    for item in items:
        if item.error:
            rejected.append({"filename": item.name, "error": item.error})
            continue
        key, digest = storage.put_original(item.data)
        accepted.append((item.name, key, digest))
    if not accepted:
        return None, rejected
    with sessions.begin() as session:
        batch = Batch(created_by=user_id, source=source)
        session.add(batch)
        session.flush()
        studies = [Study(batch_id=batch.id, filename=name[:512], storage_key=key, content_sha256=digest)
                   for name, key, digest in accepted]
        session.add_all(studies)
        session.flush()
        study_ids = [study.id for study in studies]
        audit(session, user_id, "batch.upload", "batch", batch.id, studies=len(study_ids),
              rejected=len(rejected), source=source)
    enqueue_studies(study_ids, batch_size)
    return batch, rejected


def enqueue_studies(study_ids: list[int], batch_size: int) -> None:
    """Queue ids in chunks of `batch_size`: one task, one model run per chunk."""
    from worker.tasks import screen_studies

    for start in range(0, len(study_ids), batch_size):
        screen_studies.delay(study_ids[start:start + batch_size])
