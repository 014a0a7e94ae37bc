"""Reads shared by the API and the portal: batches with progress, the review queue, visibility."""
import logging
from dataclasses import dataclass

from flask_login import current_user
from sqlalchemy import String, case, cast, exists, func, or_, select, true
from sqlalchemy.orm import Session, selectinload

from db.models import (
    FINISHED,
    Batch,
    FlagStatus,
    OutboundMessage,
    Prediction,
    Review,
    ReviewFlag,
    Study,
    StudyResult,
    StudyStatus,
    as_utc,
)
from models.reasons import FlagReason
from studies.rejections import rejected_counts, rejections_of
from studies.reviews import explain_flag

# A batch whose upload is still being taken in (batches.received_at unset); else its studies' status.
RECEIVING = "receiving"

logger = logging.getLogger(__name__)


def can_see_all() -> bool:
    return current_user.role in ("reviewer", "admin")


def visible_batches():
    """A filter on Batch for what the current user may see: all, their department's, or their own."""
    if can_see_all():
        return true()
    department = getattr(current_user, "department_id", None)
    if department is None:
        return Batch.created_by == current_user.id
    return or_(Batch.department_id == department, Batch.created_by == current_user.id)


def visible_batch(session: Session, batch_id: int) -> Batch | None:
    """The batch if it exists and the current user may see it; otherwise None (answered as 404)."""
    return session.scalar(select(Batch).where(Batch.id == batch_id, visible_batches()))


def visible_study(session: Session, study_id: int) -> Study | None:
    """The study if it exists and its batch is visible to the current user."""
    return session.scalar(select(Study).join(Batch, Study.batch_id == Batch.id)
                          .where(Study.id == study_id, visible_batches()))


def visible_results():
    """A filter on StudyResult: a study is visible when one of its images is (departments never share one)."""
    return exists().where(Study.study_result_id == StudyResult.id, Study.batch_id == Batch.id, visible_batches())


def visible_result(session: Session, result_id: int) -> StudyResult | None:
    return session.scalar(select(StudyResult).where(StudyResult.id == result_id, visible_results()))


def batch_progress(session: Session, batch_ids: list[int]) -> dict[int, dict]:
    """Counts per status for each batch, in one query."""
    rows = session.execute(
        select(Study.batch_id, Study.status, func.count())
        .where(Study.batch_id.in_(batch_ids)).group_by(Study.batch_id, Study.status)).all()
    progress = {batch_id: {status: 0 for status in StudyStatus} for batch_id in batch_ids}
    for batch_id, status, count in rows:
        progress[batch_id][status] = count
    rejected = rejected_counts(session, batch_ids)  # files refused at the door: no study row, counted apart
    receiving = set(session.scalars(select(Batch.id).where(Batch.id.in_(batch_ids), Batch.received_at.is_(None))))
    return {batch_id: {**_summary(counts, batch_id in receiving), "rejected": rejected.get(batch_id, 0)}
            for batch_id, counts in progress.items()}


def _summary(counts: dict, receiving: bool) -> dict:
    """A batch's status: `receiving` while its upload is still being taken in, then queued, running or done."""
    total = sum(counts.values())
    finished = sum(counts[status] for status in FINISHED)
    if receiving:
        status = RECEIVING
    elif finished == total:
        status = StudyStatus.DONE
    elif finished or counts[StudyStatus.RUNNING]:
        status = StudyStatus.RUNNING
    else:
        status = StudyStatus.QUEUED
    return {"status": str(status), "total": total, "done": counts[StudyStatus.DONE],
            "failed": counts[StudyStatus.ERROR], "queued": counts[StudyStatus.QUEUED],
            "running": counts[StudyStatus.RUNNING],
            "percent": round(100 * finished / total) if total else 100}


def batch_studies(session: Session, batch_id: int) -> list[Study]:
    """A batch's studies in upload order, with their predictions and flags loaded."""
    return session.scalars(
        select(Study).where(Study.batch_id == batch_id).order_by(Study.id)
        .options(selectinload(Study.prediction),
                 selectinload(Study.flag).selectinload(ReviewFlag.reviews).selectinload(Review.reviewer))).all()


def batch_json(session: Session, batch: Batch) -> dict:
    studies = batch_studies(session, batch.id)
    return {"id": batch.id, "created_at": as_utc(batch.created_at).isoformat(),
            **batch_progress(session, [batch.id])[batch.id],
            "flagged": sum(study.flag is not None for study in studies),
            "rejections": rejections_of(session, batch.id),  # [{"filename", "reason"}], natural order
            "studies": [study_json(study) for study in studies]}


def study_json(study: Study) -> dict:
    prediction, flag = study.prediction, study.flag
    review = flag.latest if flag else None
    return {
        "id": study.id, "filename": study.filename, "status": study.status,
        "probability": round(prediction.probability, 4) if prediction else None,
        "prediction": prediction.prediction if prediction else None,
        "threshold": prediction.threshold if prediction else None,
        "model_version": prediction.model_version if prediction else None,
        # What the models computed in, float32 or bfloat16 (models/precision.py); None: not recorded.
        "model_precision": (prediction.details or {}).get("precision") if prediction else None,
        # The department operating point (site_calibrations row) behind the call; None: the shipped one.
        "site_calibration_id": prediction.site_calibration_id if prediction else None,
        "flagged": flag is not None, "flag_reasons": list(flag.reasons) if flag else [],
        "review_status": flag.status if flag else None,
        # In words, for people (models.flags.REASON_TEXT; a DICOM header's out_of_scope names its cause).
        "flag_text": [text for _, text in explain_flag(study)] if flag else [],
        # The model's call means little for these: pages show it without emphasis (and say why).
        "out_of_scope": bool(flag and FlagReason.OUT_OF_SCOPE in flag.reasons),
        "review_decision": review.decision if review else None,
        "reviewer": review.reviewer.username if review else None,
        "reviewed_at": as_utc(review.created_at).isoformat() if review else None,
        "error": study.error, "not_applicable": study.not_applicable,
        "study_result_id": study.study_result_id, "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "uploaded_at": as_utc(study.created_at).isoformat(),
        "finished_at": as_utc(study.finished_at).isoformat() if study.finished_at else None,
    }


def result_json(session: Session, result: StudyResult) -> dict:
    """A radiology study's one result, its images and where its outbound messages stand."""
    messages = session.scalars(select(OutboundMessage).where(OutboundMessage.study_result_id == result.id)
                               .order_by(OutboundMessage.id)).all()
    return {
        "id": result.id, "study_instance_uid": result.study_instance_uid,
        "accession_number": result.accession_number, "study_date": result.study_date,
        "acquired_at": as_utc(result.acquired_at).isoformat() if result.acquired_at else None,
        "scope": result.scope, "call": result.call,
        "probability": round(result.probability, 4) if result.probability is not None else None,
        "threshold": result.threshold, "decided_by_image": result.decided_by_image_id,
        "model_version": result.model_version, "review_decision": result.review_decision,
        "open_flags": result.open_flags, "status": result.status, "version": result.version,
        "updated_at": as_utc(result.updated_at).isoformat(),
        "images": [{"id": image.id, "batch_id": image.batch_id, "filename": image.filename, "status": image.status,
                    "modality": image.modality, "view_position": image.view_position,
                    "sop_instance_uid": image.sop_instance_uid, "not_applicable": image.not_applicable}
                   for image in result.images],
        "outbound": [{"kind": message.kind, "version": message.result_version, "destination": message.destination,
                      "state": message.state, "attempts": message.attempts, "last_error": message.last_error,
                      "sent_at": as_utc(message.sent_at).isoformat() if message.sent_at else None}
                     for message in messages],
    }


PAGE_SIZE, MAX_PAGE_SIZE = 50, 200


@dataclass(frozen=True)
class QueuePage:
    """One page of the review queue."""

    rows: list[tuple[ReviewFlag, Study, Prediction]]
    page: int
    pages: int
    total: int


# The queue's lanes, in the order a reader should empty them (web/review.py shows one at a time):
LANES = {
    "third": "Third reads",  # two readers disagreed
    "missed": "Possible missed pneumonia",  # NORMAL calls, the closest below the threshold first
    "confirm": "Pneumonia calls to confirm",  # flagged PNEUMONIA calls, the closest above the threshold first
    "scope": "Out of scope or poor quality",
    "qa": "Quality samples",  # unflagged NORMAL calls drawn at random
}
SCOPE_REASONS = (FlagReason.OUT_OF_SCOPE, FlagReason.LOW_QUALITY, FlagReason.LUNG_CROP_FAILED)


def flag_has(reason: str):
    """A filter on ReviewFlag: its reasons hold `reason`."""
    # Reasons are a JSON list ('["near_threshold", "uncertain"]'): its text holds each reason in quotes.
    return cast(ReviewFlag.reasons, String).like(f'%"{reason}"%')


LANE = case((flag_has(FlagReason.THIRD_READ), "third"),
            (or_(*(flag_has(reason) for reason in SCOPE_REASONS)), "scope"),
            (flag_has(FlagReason.QA_SAMPLE), "qa"), (Prediction.prediction == "NORMAL", "missed"), else_="confirm")
_LANE_ORDER = case(*((LANE == lane, index) for index, lane in enumerate(LANES)), else_=len(LANES))
# Within a lane: the risk that the call is wrong, i.e. how close the probability is to the threshold.
_RISK = case((LANE == "missed", Prediction.threshold - Prediction.probability),
             (LANE == "confirm", Prediction.probability - Prediction.threshold), else_=0.0)


def _queued(status: str):
    """A flag per film: a copy of an earlier upload (same content, same department) is not queued again: the
    first copy's flag stands for it, and a decision on it closes the copies' flags too."""
    return (select(ReviewFlag, Study, Prediction)
            .join(Study, ReviewFlag.study_id == Study.id)
            .join(Prediction, Prediction.study_id == Study.id)
            .where(ReviewFlag.status == status, Study.duplicate_of_id.is_(None)))


def review_queue(session: Session, status: str = FlagStatus.OPEN, page: int = 1,
                 per_page: int = PAGE_SIZE, lane: str | None = None) -> QueuePage:
    """Open flags lane by lane (LANES), the riskiest first within a lane, a page at a time; `lane` keeps one.
    Closed flags: the latest decision first."""
    per_page = max(1, min(per_page, MAX_PAGE_SIZE))
    queued = _queued(status)
    if lane is not None:
        queued = queued.where(LANE == lane)
    total = session.scalar(select(func.count()).select_from(queued.subquery()))
    pages = max(1, -(-total // per_page))
    page = max(1, min(page, pages))
    if status == FlagStatus.OPEN:
        order = (_LANE_ORDER, _RISK, ReviewFlag.id)
    else:
        latest = select(func.max(Review.id)).where(Review.flag_id == ReviewFlag.id).scalar_subquery()
        order = (latest.desc(), ReviewFlag.id.desc())
    rows = session.execute(queued.order_by(*order).options(selectinload(ReviewFlag.reviews))
                           .offset((page - 1) * per_page).limit(per_page)).all()
    return QueuePage(list(rows), page, pages, total)


def queue_counts(session: Session) -> dict[str, int]:
    """Open flags per lane (every lane named, zero when empty)."""
    counts = dict(session.execute(select(LANE, func.count()).select_from(ReviewFlag)
                                  .join(Study, ReviewFlag.study_id == Study.id)
                                  .join(Prediction, Prediction.study_id == Study.id)
                                  .where(ReviewFlag.status == FlagStatus.OPEN, Study.duplicate_of_id.is_(None))
                                  .group_by(LANE)).all())
    return {lane: counts.get(lane, 0) for lane in LANES}


def lane_order(session: Session, lane: str | None, limit: int = 5000) -> list[tuple[int, int | None, object]]:
    """(study id, claimed by, claimed until) of the open flags in queue order: next/previous and "next case"."""
    query = _queued(FlagStatus.OPEN).with_only_columns(Study.id, ReviewFlag.claimed_by, ReviewFlag.claimed_until)
    if lane is not None:
        query = query.where(LANE == lane)
    return [tuple(row) for row in session.execute(query.order_by(_LANE_ORDER, _RISK, ReviewFlag.id).limit(limit))]


def copies_of(session: Session, study_ids: list[int]) -> dict[int, int]:
    """How many later copies of each film (same content, same department) there are."""
    return dict(session.execute(select(Study.duplicate_of_id, func.count()).where(
        Study.duplicate_of_id.in_(study_ids)).group_by(Study.duplicate_of_id)).all()) if study_ids else {}
