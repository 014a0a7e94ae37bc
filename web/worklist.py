"""All results, for readers: every screened image with filters (call, flag reason, department, batch, date,
decided or not), newest first, a page at a time."""
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, selectinload

from db.models import Batch, Prediction, Review, ReviewFlag, Study, User
from models.reasons import FlagReason
from web.queries import PAGE_SIZE, QueuePage, flag_has, visible_batches

logger = logging.getLogger(__name__)
REASONS = tuple(FlagReason)
CALLS = ("PNEUMONIA", "NORMAL", "none")


@dataclass(frozen=True)
class Filters:
    """What the worklist's filter form asks for; anything unreadable is simply not applied."""

    call: str | None = None
    reason: str | None = None
    department: int | None = None
    batch: int | None = None
    since: date | None = None
    until: date | None = None
    decided: str | None = None  # "yes", "no"

    @classmethod
    def from_args(cls, args) -> "Filters":
        return cls(call=_choice(args.get("call"), CALLS), reason=_choice(args.get("reason"), REASONS),
                   department=args.get("department", type=int), batch=args.get("batch", type=int),
                   since=_date(args.get("since")), until=_date(args.get("until")),
                   decided=_choice(args.get("decided"), ("yes", "no")))

    def args(self) -> dict:
        """The filters as query arguments (for paging links)."""
        return {key: value.isoformat() if isinstance(value, date) else value
                for key, value in self.__dict__.items() if value is not None}


def _choice(value: str | None, allowed) -> str | None:
    return value if value in allowed else None


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def worklist(session: Session, filters: Filters, page: int = 1, per_page: int = PAGE_SIZE) -> QueuePage:
    """Visible images matching `filters`, newest first; rows are (Study, uploader name)."""
    query = (select(Study, User.username).join(Batch, Study.batch_id == Batch.id)
             .join(User, Batch.created_by == User.id)
             .outerjoin(Prediction, Prediction.study_id == Study.id)
             .outerjoin(ReviewFlag, ReviewFlag.study_id == Study.id)
             .where(visible_batches()))
    if filters.call == "none":
        query = query.where(Prediction.id.is_(None))
    elif filters.call:
        query = query.where(Prediction.prediction == filters.call)
    if filters.reason:
        query = query.where(flag_has(filters.reason))
    if filters.department is not None:
        query = query.where(Batch.department_id == filters.department)
    if filters.batch is not None:
        query = query.where(Study.batch_id == filters.batch)
    if filters.since:
        query = query.where(Study.created_at >= datetime.combine(filters.since, time(), timezone.utc))
    if filters.until:
        query = query.where(Study.created_at < datetime.combine(filters.until + timedelta(days=1), time(),
                                                                 timezone.utc))
    decided = exists().where(Review.flag_id == ReviewFlag.id)
    if filters.decided == "yes":
        query = query.where(decided)
    elif filters.decided == "no":
        query = query.where(~decided)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    pages = max(1, -(-total // per_page))
    page = max(1, min(page, pages))
    rows = session.execute(query.order_by(Study.id.desc()).offset((page - 1) * per_page).limit(per_page).options(
        selectinload(Study.prediction), selectinload(Study.flag).selectinload(ReviewFlag.reviews)
        .selectinload(Review.reviewer), selectinload(Study.batch), selectinload(Study.study_result))).all()
    return QueuePage(list(rows), page, pages, total)
