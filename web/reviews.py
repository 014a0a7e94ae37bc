"""Record a reviewer's decision on a flagged study: append-only, audited."""
import logging

from sqlalchemy.orm import Session

from db.models import DECISIONS, Review, Study
from db.session import audit

logger = logging.getLogger(__name__)


def record_decision(session: Session, study: Study, reviewer_id: int, decision: str, note: str) -> Review:
    """Add a decision to the study's flag and close it; raises ValueError on a bad decision."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if study.flag is None:
        raise LookupError("this study is not flagged for review")
    review = Review(flag_id=study.flag.id, reviewer_id=reviewer_id, decision=decision, note=note[:4000])
    session.add(review)
    study.flag.status = "closed"
    session.flush()
    audit(session, reviewer_id, "review.decision", "study", study.id, decision=decision,
          review_id=review.id)
    return review
