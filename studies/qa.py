"""Quality-check sampling: the miss rate among unflagged NORMAL calls, measured in production.

A share of the NORMAL calls that no flag sends to a person is drawn at random and flagged
`qa_sample`. Reviewers read them like any other film; the share of those they call pneumonia
estimates the department's miss rate, with an exact (Clopper–Pearson) interval, per model version.
"""
import logging
import math
import random
from dataclasses import dataclass

from sqlalchemy import String, cast, select
from sqlalchemy.orm import Session, selectinload

from db.models import Decision, Department, ReviewFlag, SiteCalibration, Study
from models.operating_point import DEFAULT_MISS_RATE, clopper_pearson_interval, clopper_pearson_upper
from models.reasons import FlagReason

logger = logging.getLogger(__name__)
_draws = random.SystemRandom()


def draw(share: float) -> bool:
    """True for a share of calls, unpredictably (reviewers cannot tell a sample from its id)."""
    return share > 0 and _draws.random() < share


def shares_by_department(session: Session, department_ids: set[int | None], default: float) -> dict[int | None, float]:
    """Each department's QA share: its own when set, else the service default."""
    shares = dict.fromkeys(department_ids, default)
    ids = {department_id for department_id in department_ids if department_id is not None}
    if ids:
        for department_id, share in session.execute(select(Department.id, Department.qa_share)
                                                    .where(Department.id.in_(ids))):
            if share is not None:
                shares[department_id] = share
    return shares


def set_share(session: Session, department: Department, share: float | None) -> None:
    """A department's own QA share (None: the service default)."""
    if share is not None and not 0.0 <= share <= 1.0:
        raise ValueError(f"the QA share must be between 0 and 1, got {share}")
    department.qa_share = share


@dataclass(frozen=True)
class MissRate:
    """The miss rate among unflagged NORMAL calls of one department and model version, from QA reviews."""

    department: str
    model_version: str
    sampled: int        # QA samples drawn
    read: int           # with a pneumonia or normal decision (unreadable ones say nothing)
    pneumonia: int      # reviewers called pneumonia: misses
    estimate: float | None
    lower: float        # 95% two-sided Clopper–Pearson interval
    upper: float
    upper_one_sided: float  # the bound compared with the target
    target: float

    @property
    def reads_needed(self) -> int:
        """Reads with no miss at all needed before the 95% bound can fall to the target."""
        return math.ceil(math.log(0.05) / math.log(1.0 - self.target))

    @property
    def warning(self) -> bool:
        """The 95% upper bound is above the department's target."""
        return self.read > 0 and self.upper_one_sided > self.target


def miss_rates(session: Session) -> list[MissRate]:
    """One MissRate per department (or no department) and model version that has QA samples."""
    flags = session.scalars(
        select(ReviewFlag).join(Study, ReviewFlag.study_id == Study.id)
        # The JSON list as text: portable across SQLite and PostgreSQL, and it spares loading every flag.
        .where(Study.duplicate_of_id.is_(None),
               cast(ReviewFlag.reasons, String).contains(f'"{FlagReason.QA_SAMPLE}"', autoescape=True))
        .options(selectinload(ReviewFlag.reviews), selectinload(ReviewFlag.study).selectinload(Study.prediction),
                 selectinload(ReviewFlag.study).selectinload(Study.batch))).all()
    names = dict(session.execute(select(Department.id, Department.name)).all())
    targets = dict(session.execute(select(SiteCalibration.department_id, SiteCalibration.miss_rate_target)
                                   .where(SiteCalibration.active.is_(True))).all())
    groups: dict[tuple[int | None, str], list[ReviewFlag]] = {}
    for flag in flags:
        if FlagReason.QA_SAMPLE in flag.reasons and flag.study.prediction is not None:
            key = (flag.study.batch.department_id, flag.study.prediction.model_version)
            groups.setdefault(key, []).append(flag)
    rates = []
    for (department_id, version), sampled in sorted(groups.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        decisions = [flag.latest.decision for flag in sampled if flag.latest is not None]
        read = sum(decision in (Decision.PNEUMONIA, Decision.NORMAL) for decision in decisions)
        pneumonia = sum(decision == Decision.PNEUMONIA for decision in decisions)
        lower, upper = clopper_pearson_interval(pneumonia, read)
        rates.append(MissRate(
            department=names.get(department_id, "(no department)"), model_version=version, sampled=len(sampled),
            read=read, pneumonia=pneumonia, estimate=pneumonia / read if read else None, lower=lower, upper=upper,
            upper_one_sided=clopper_pearson_upper(pneumonia, read),
            target=targets.get(department_id, DEFAULT_MISS_RATE)))
    return rates
