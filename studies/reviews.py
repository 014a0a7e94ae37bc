"""Review decisions on flagged studies (append-only, audited) and why a study was flagged, in words."""
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Decision, FlagStatus, Review, ReviewFlag, Study
from db.session import audit
from models.flags import REASON_TEXT
from models.reasons import FlagReason
from studies.results import refresh_many
from studies.scope import header_causes

logger = logging.getLogger(__name__)


def record_decision(session: Session, study: Study, reviewer_id: int, decision: str, note: str) -> Review:
    """Add a decision to the study's flag and close it; raises ValueError on a bad decision."""
    if decision not in tuple(Decision):
        raise ValueError(f"decision must be one of {', '.join(Decision)}, got {decision!r}")
    if study.flag is None:
        raise LookupError("this study is not flagged for review")
    review = _decide(session, study, reviewer_id, decision, note)
    # Copies of the same film in the department are not queued again (web.queries.review_queue): the
    # decision on the first copy is theirs too.
    copies = session.scalars(select(Study).join(ReviewFlag, ReviewFlag.study_id == Study.id).where(
        Study.duplicate_of_id == study.id, ReviewFlag.status == FlagStatus.OPEN)).all()
    for copy in copies:
        _decide(session, copy, reviewer_id, decision, note, decided_on=study.id)
    refresh_many(session, (image.study_result_id for image in (study, *copies) if image.study_result_id is not None))
    return review


def _decide(session: Session, study: Study, reviewer_id: int, decision: str, note: str,
            decided_on: int | None = None) -> Review:
    review = Review(flag_id=study.flag.id, reviewer_id=reviewer_id, decision=decision, note=note[:4000])
    session.add(review)
    study.flag.status = FlagStatus.CLOSED
    session.flush()
    extra = {"decided_on": decided_on} if decided_on else {}
    audit(session, reviewer_id, "review.decision", "study", study.id, decision=decision, review_id=review.id,
          **extra)
    return review


def explain_flag(study: Study) -> list[tuple[str, str]]:
    """(reason, what it means) for each flag reason; a DICOM header's out_of_scope names its cause."""
    explained = []
    for reason in study.flag.reasons:
        text = REASON_TEXT.get(reason, reason)
        causes = header_causes(study.modality, study.patient_age, study.view_position) \
            if reason == FlagReason.OUT_OF_SCOPE else []
        if causes:
            text = f"DICOM header: {'; '.join(causes)}. {text}"
        explained.append((reason, text))
    return explained
