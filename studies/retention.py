"""Retention: delete the stored originals of studies finished long ago; rows, results and pictures stay.

Storage is content-addressed, so one file can be the original of several studies (the same film sent again,
in another department...): a file goes only when every study that refers to it finished before the cutoff, no
DICOM instance waiting in the listener refers to it, and it was not handed over again since the cutoff (intake
sets a stored file's time on every hand-over). Studies whose file went get `original_purged_at`; anything that
reads an original afterwards must answer "original purged". Safe to run twice, and from several workers at once.
"""
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from core.storage import ATTENTION, DERIVED_KINDS, Storage
from db.models import FINISHED, DicomPending, Study, utcnow
from db.session import audit
from studies.pictures import make_all

logger = logging.getLogger(__name__)
CHUNK = 500


@dataclass
class PurgeReport:
    """What a purge deleted (or, in a dry run, would delete) and what it kept."""

    files: int = 0  # original files deleted
    bytes: int = 0
    studies: int = 0  # studies marked original_purged_at
    kept_in_use: int = 0  # old files a newer or unfinished study, or a waiting DICOM instance, still refers to
    kept_recent: int = 0  # old files handed over again since the cutoff
    derived: int = 0  # derived pictures deleted (only with derived=True)


def purge_originals(sessions: sessionmaker[Session], storage: Storage, older_than_days: int, *,
                    dry_run: bool = False, derived: bool = False, by: str = "cli") -> PurgeReport:
    """Delete the originals of studies finished more than `older_than_days` days ago (and, with `derived`, their
    pictures); one audit event `originals.purge` with the counts, none for a dry run, which changes nothing."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be 1 or more")
    now = utcnow()
    cutoff = now - timedelta(days=older_than_days)
    report = PurgeReport()
    with sessions() as session:
        keys = sorted(set(session.scalars(select(Study.storage_key).where(
            Study.status.in_(FINISHED), Study.finished_at < cutoff, Study.original_purged_at.is_(None))).all()))
        in_use = _in_use(session, keys, cutoff)
        old_ids = session.scalars(select(Study.id).where(Study.status.in_(FINISHED), Study.finished_at < cutoff)
                                  .order_by(Study.id)).all() if derived else []
    gone = []
    for key in keys:
        if key in in_use:
            report.kept_in_use += 1
            continue
        path = storage.path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:  # deleted by an earlier or a parallel run: mark its studies all the same
            gone.append(key)
            continue
        if datetime.fromtimestamp(stat.st_mtime, cutoff.tzinfo) >= cutoff:
            report.kept_recent += 1  # handed over again: a study referring to it may be on its way in
            continue
        if not dry_run:
            if not derived:  # the pictures people open stay: make those nobody opened yet, while the film is here
                _keep_pictures(sessions, storage, key)
            path.unlink(missing_ok=True)
        gone.append(key)
        report.files += 1
        report.bytes += stat.st_size
    for study_id in old_ids:
        for kind in (*DERIVED_KINDS, ATTENTION):
            picture = storage.derived_path(study_id, kind)
            if picture.exists():
                report.derived += 1
                if not dry_run:
                    picture.unlink(missing_ok=True)
    with sessions.begin() as session:
        for start in range(0, len(gone), CHUNK):
            unmarked = (Study.storage_key.in_(gone[start:start + CHUNK]), Study.original_purged_at.is_(None))
            if dry_run:  # count what would be marked, change nothing
                report.studies += session.scalar(select(func.count()).select_from(Study).where(*unmarked))
            else:
                report.studies += session.execute(
                    update(Study).where(*unmarked).values(original_purged_at=now)).rowcount
        if not dry_run:
            audit(session, None, "originals.purge", "storage", None, older_than_days=older_than_days,
                  derived_too=derived, by=by, **asdict(report))
    logger.info("purge of originals finished over %d days ago%s: %s", older_than_days,
                " (dry run)" if dry_run else "", asdict(report))
    return report


def _keep_pictures(sessions: sessionmaker[Session], storage: Storage, key: str) -> None:
    with sessions() as session:
        for study in session.scalars(select(Study).where(Study.storage_key == key, Study.duplicate_of_id.is_(None))
                                     .options(selectinload(Study.prediction))):
            make_all(storage, study)


def _in_use(session: Session, keys: list[str], cutoff: datetime) -> set[str]:
    """The keys a study not finished before the cutoff, or a DICOM instance waiting in the listener, refers to."""
    used: set[str] = set()
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start:start + CHUNK]
        used.update(session.scalars(select(Study.storage_key).where(
            Study.storage_key.in_(chunk), or_(Study.status.not_in(FINISHED), Study.finished_at.is_(None),
                                              Study.finished_at >= cutoff))).all())
        used.update(session.scalars(select(DicomPending.storage_key).where(DicomPending.storage_key.in_(chunk))).all())
    return used
