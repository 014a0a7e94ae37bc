"""Files refused at the door, kept on their batch with the reason: counted, listed, grouped, exported."""
import logging
import re
from collections import defaultdict

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from db.models import BatchRejection

logger = logging.getLogger(__name__)
_DIGITS = re.compile(r"(\d+)")
FILENAME_MAX, REASON_MAX = 512, 500


def record_rejections(session: Session, batch_id: int, rejected: list[dict]) -> None:
    """Keep each refused file ({"filename", "error"}) on the batch; one short row each, never the bytes."""
    if rejected:
        session.execute(insert(BatchRejection), [
            {"batch_id": batch_id, "filename": item["filename"][:FILENAME_MAX], "reason": item["error"][:REASON_MAX]}
            for item in rejected])


def natural_key(name: str) -> list:
    """Sort key that puts "2.png" before "10.png" before "100.png" (case-insensitive)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _DIGITS.split(name) if part]


def rejections_of(session: Session, batch_id: int) -> list[dict]:
    """A batch's refused files, sorted naturally by name: [{"filename", "reason"}]."""
    rows = session.execute(select(BatchRejection.filename, BatchRejection.reason)
                           .where(BatchRejection.batch_id == batch_id)).all()
    return sorted(({"filename": name, "reason": reason} for name, reason in rows),
                  key=lambda row: natural_key(row["filename"]))


def grouped(rejections: list[dict]) -> list[dict]:
    """The same reason once, with its files (in natural order): the commonest reason first."""
    by_reason = defaultdict(list)
    for row in rejections:
        by_reason[row["reason"]].append(row["filename"])
    return [{"reason": reason, "count": len(files), "filenames": files}
            for reason, files in sorted(by_reason.items(), key=lambda pair: (-len(pair[1]), pair[0]))]


def rejected_counts(session: Session, batch_ids: list[int]) -> dict[int, int]:
    """Refused files per batch, in one query; batches with none are absent."""
    if not batch_ids:
        return {}
    return dict(session.execute(select(BatchRejection.batch_id, func.count())
                                .where(BatchRejection.batch_id.in_(batch_ids))
                                .group_by(BatchRejection.batch_id)).all())
