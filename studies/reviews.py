"""Review decisions (append-only, audited), soft claims for several readers, and why a study was flagged, in words.

Several readers: opening a case claims it for CLAIM_MINUTES (others are warned and their "next case" skips it);
a decision carries the flag's version (how many decisions it held when the page loaded) and is refused with
`Conflict` when another reader decided in between; a reader disagreeing with another reader's decision reopens
the flag with the reason third_read, and the next reader who has not read it yet settles it.
"""
import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import Decision, FlagStatus, Review, ReviewFlag, Study, as_utc, utcnow
from db.session import audit
from models.flags import REASON_TEXT
from models.reasons import FlagReason
from studies.results import refresh_many
from studies.scope import header_causes

logger = logging.getLogger(__name__)
CLAIM_MINUTES = 5


class Conflict(Exception):
    """The flag changed since the reader's page loaded: `latest` is the decision they did not see."""

    def __init__(self, message: str, latest: Review | None):
        super().__init__(message)
        self.latest = latest


def flag_version(study: Study) -> int:
    """How many decisions the study's flag holds (0 without a flag): what a decision form sends back."""
    return len(study.flag.reviews) if study.flag is not None else 0


def record_decision(session: Session, study: Study, reviewer_id: int, decision: str, note: str, *,
                    expected_version: int | None = None, on_request: bool = False) -> Review:
    """Add a decision to the study's flag and close it (or mark it for a third read when it contradicts another
    reader); raises ValueError on a bad decision, LookupError when there is no flag (and `on_request` is not set,
    which opens a reader_request flag on a screened study), Conflict when `expected_version` is stale."""
    if decision not in tuple(Decision):
        raise ValueError(f"decision must be one of {', '.join(Decision)}, got {decision!r}")
    if study.flag is None:
        if not on_request:
            raise LookupError("this study is not flagged for review")
        _open_on_request(session, study, reviewer_id)
    flag = study.flag
    if expected_version is not None and expected_version != len(flag.reviews):
        latest = flag.latest
        who = f" {latest.reviewer.username} recorded {latest.decision}" if latest else " its decisions changed"
        raise Conflict(f"this case changed while you read it:{who}; your decision was not recorded", latest)
    third_read = _starts_third_read(flag, reviewer_id, decision)
    settles = _settles_third_read(flag, reviewer_id)
    review = _decide(session, study, reviewer_id, decision, note)
    if third_read:
        flag.reasons = [*flag.reasons, FlagReason.THIRD_READ.value]
        flag.status = FlagStatus.OPEN
        audit(session, reviewer_id, "review.third_read", "study", study.id, decision=decision,
              other=flag.reviews[-2].decision, other_reviewer=flag.reviews[-2].reviewer_id)
    elif FlagReason.THIRD_READ in flag.reasons and not settles:
        flag.status = FlagStatus.OPEN  # a reader of the disagreement cannot settle it: a third reader does
    flag.claimed_by = flag.claimed_until = None
    # Copies of the same film in the department are not queued again (web.queries.review_queue): the
    # decision on the first copy is theirs too.
    copies = session.scalars(select(Study).join(ReviewFlag, ReviewFlag.study_id == Study.id).where(
        Study.duplicate_of_id == study.id, ReviewFlag.status == FlagStatus.OPEN)).all()
    for copy in copies:
        _decide(session, copy, reviewer_id, decision, note, decided_on=study.id)
    refresh_many(session, (image.study_result_id for image in (study, *copies) if image.study_result_id is not None))
    return review


def _open_on_request(session: Session, study: Study, reviewer_id: int) -> None:
    """A reader agrees or disagrees with a call nobody flagged: a reader_request flag carries the decision."""
    if study.prediction is None:
        raise LookupError("this study has no call to agree or disagree with")
    study.flag = ReviewFlag(study_id=study.id, reasons=[FlagReason.READER_REQUEST.value])
    session.add(study.flag)
    session.flush()
    audit(session, reviewer_id, "study.flag", "study", study.id, reasons=[FlagReason.READER_REQUEST.value])


def _starts_third_read(flag: ReviewFlag, reviewer_id: int, decision: str) -> bool:
    latest = flag.latest
    return (latest is not None and latest.reviewer_id != reviewer_id and latest.decision != decision
            and FlagReason.THIRD_READ not in flag.reasons)


def _settles_third_read(flag: ReviewFlag, reviewer_id: int) -> bool:
    return all(review.reviewer_id != reviewer_id for review in flag.reviews)


def _decide(session: Session, study: Study, reviewer_id: int, decision: str, note: str,
            decided_on: int | None = None) -> Review:
    review = Review(flag=study.flag, reviewer_id=reviewer_id, decision=decision, note=note[:4000])
    session.add(review)
    study.flag.status = FlagStatus.CLOSED
    session.flush()
    extra = {"decided_on": decided_on} if decided_on else {}
    audit(session, reviewer_id, "review.decision", "study", study.id, decision=decision, review_id=review.id,
          **extra)
    return review


def claim(session: Session, flag: ReviewFlag, reader_id: int, now: datetime | None = None) -> int | None:
    """Claim an open flag for CLAIM_MINUTES unless another reader holds it; returns that reader's id, else None.
    One UPDATE with the condition in it: two readers opening the case at once cannot both win."""
    now = now or utcnow()
    taken = session.execute(
        update(ReviewFlag).where(ReviewFlag.id == flag.id, ReviewFlag.status == FlagStatus.OPEN, or_(
            ReviewFlag.claimed_by.is_(None), ReviewFlag.claimed_by == reader_id, ReviewFlag.claimed_until < now))
        .values(claimed_by=reader_id, claimed_until=now + timedelta(minutes=CLAIM_MINUTES))
        .execution_options(synchronize_session=False)).rowcount
    session.refresh(flag, ["claimed_by", "claimed_until"])
    return None if taken else holder(flag, reader_id, now)


def holder(flag: ReviewFlag, reader_id: int, now: datetime | None = None) -> int | None:
    """Another reader's id when they hold a live claim on the flag; None otherwise."""
    if flag.claimed_by in (None, reader_id) or flag.claimed_until is None:
        return None
    return flag.claimed_by if as_utc(flag.claimed_until) > (now or utcnow()) else None


def release(session: Session, flag: ReviewFlag, reader_id: int) -> None:
    """Give up one's own claim (skip, leave the case)."""
    if flag.claimed_by == reader_id:
        flag.claimed_by = flag.claimed_until = None


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
