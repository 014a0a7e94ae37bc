"""The same file uploaded again: recognised by content hash, answered from the first study's result."""
import logging
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from db.models import UNFINISHED, Batch, FlagStatus, Prediction, Review, ReviewFlag, Study, StudyStatus, utcnow
from db.session import audit
from models.reasons import FlagReason
from studies.results import refresh_many

logger = logging.getLogger(__name__)
LOOKUP_CHUNK = 500
# What copy_result reads of an original, loaded with it: one query for all, not one per copy.
ANSWER = (selectinload(Study.prediction), selectinload(Study.flag))


def link_duplicates(session: Session, batch: Batch, studies: Iterable[Study]) -> set[int]:
    """Point each new study of `batch` at an earlier one with the same content in the batch's department; returns
    the ids needing no inference. Never across departments: each has its own operating point and results."""
    held, studies = set(), sorted(studies, key=lambda study: study.id)
    first = _first_copies(session, studies, batch.department_id)
    copies = [(study, original) for study in studies
              if (original := first.get(study.content_sha256)) is not None and original.id < study.id]
    answers = _answering(session, {original.id for _, original in copies if original.status == StudyStatus.DONE})
    for study, original in copies:
        study.duplicate_of_id = original.id
        held.add(study.id)
        audit(session, None, "study.duplicate", "study", study.id, duplicate_of=original.id)
        if original.id in answers:
            copy_result(session, answers[original.id], study)
    return held


def _answering(session: Session, original_ids: set[int]) -> dict[int, Study]:
    """The originals by id, with what copy_result reads of them (prediction, flag) loaded in one go."""
    if not original_ids:
        return {}
    return {original.id: original for original in session.scalars(
        select(Study).where(Study.id.in_(original_ids)).options(*ANSWER))}


def _first_copies(session: Session, studies: list[Study], department_id: int | None) -> dict[str, Study]:
    """Content hash -> the earliest study of the department that can answer for that content, in a few queries
    (one per LOOKUP_CHUNK hashes) however many studies arrive: a large upload holds its transaction briefly."""
    first: dict[str, Study] = {}
    hashes = sorted({study.content_sha256 for study in studies})
    for start in range(0, len(hashes), LOOKUP_CHUNK):
        for study in session.scalars(
                select(Study).join(Batch, Study.batch_id == Batch.id)
                .where(Study.content_sha256.in_(hashes[start:start + LOOKUP_CHUNK]), Study.duplicate_of_id.is_(None),
                       Study.status != StudyStatus.ERROR, Study.not_applicable.is_(None),
                       Batch.department_id.is_not_distinct_from(department_id))
                .order_by(Study.id)):
            first.setdefault(study.content_sha256, study)
    return first


def resolve_duplicates(session: Session, original_ids: list[int]) -> int:
    """Finish the studies waiting on these originals with the originals' outcome, and refresh their study
    results; returns how many."""
    waiting = session.scalars(
        select(Study).where(Study.duplicate_of_id.in_(original_ids),
                            Study.status.in_(UNFINISHED)).with_for_update()).all()
    originals = _answering(session, {study.duplicate_of_id for study in waiting})
    resolved = []
    for study in waiting:
        original = originals[study.duplicate_of_id]
        if original.status == StudyStatus.DONE:
            copy_result(session, original, study)
        elif original.status == StudyStatus.ERROR:
            study.status, study.finished_at = StudyStatus.ERROR, utcnow()
            study.error = f"same file as study {original.id}: {original.error}"
            audit(session, None, "study.error", "study", study.id, reason=study.error)
        else:
            continue
        resolved.append(study)
    refresh_many(session, (study.study_result_id for study in resolved if study.study_result_id is not None))
    return len(resolved)


def copy_result(session: Session, original: Study, study: Study) -> None:
    """Give `study` the original's prediction (and review flag) without running the models again."""
    source = original.prediction
    study.status, study.error, study.finished_at = StudyStatus.DONE, None, utcnow()
    session.add(Prediction(
        study_id=study.id, model_name=source.model_name, model_version=source.model_version,
        probability=source.probability, prediction=source.prediction, threshold=source.threshold,
        site_calibration_id=source.site_calibration_id,
        crop_box=list(source.crop_box), details={**(source.details or {}), "duplicate_of": original.id}))
    audit(session, None, "study.result", "study", study.id, prediction=source.prediction,
          probability=round(source.probability, 4), model_version=source.model_version,
          duplicate_of=original.id)
    # A quality-check draw is the original's; the copy is no new sample of the department's calls.
    reasons = [reason for reason in original.flag.reasons if reason != FlagReason.QA_SAMPLE] if original.flag else []
    if not reasons:
        return
    flag = ReviewFlag(study_id=study.id, reasons=reasons)
    session.add(flag)
    audit(session, None, "study.flag", "study", study.id, reasons=reasons)
    decided = original.flag.latest if original.flag.status == FlagStatus.CLOSED else None
    if decided is not None:
        # A re-sent film keeps its history: the decision already taken stands, no flag is opened again.
        flag.status = FlagStatus.CLOSED
        session.add(Review(flag=flag, reviewer_id=decided.reviewer_id, decision=decided.decision, note=decided.note))
        audit(session, None, "review.carried", "study", study.id, decision=decided.decision, decided_on=original.id)
