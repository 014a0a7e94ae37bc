"""Drift per department and week: call rate, out-of-scope rate, and the PSI of the probability and image
statistics against the validation reference (models.drift). A week with a shift past the limits warns."""
import logging
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Batch, Department, Prediction, ReviewFlag, Study, as_utc, utcnow
from models.drift import FEATURES, PSI_SHIFT, Reference
from models.reasons import FlagReason

logger = logging.getLogger(__name__)

WEEKS = 12
NO_DEPARTMENT = "(no department)"
MIN_STUDIES = 50       # fewer in a week: rates shown, PSI not computed (too noisy to mean anything)
OUT_OF_SCOPE_EXCESS = 0.05  # warn when a week's out-of-scope rate passes twice the reference plus this


@dataclass
class Week:
    """One department's ISO week of results."""

    department: str
    week: str                 # e.g. 2026-W48
    n: int
    call_rate: float
    out_of_scope_rate: float
    psi: dict[str, float] = field(default_factory=dict)  # empty when n < MIN_STUDIES
    warnings: list[str] = field(default_factory=list)


def weekly(session: Session, reference: Reference, weeks: int = WEEKS, department: str | None = None) -> list[Week]:
    """Weeks of the last `weeks` with results, per department (oldest first within each department); only the
    named department's when `department` is given (a chart reads no other department's results)."""
    since = utcnow() - timedelta(weeks=weeks)
    name = func.coalesce(Department.name, NO_DEPARTMENT)
    query = (select(name.label("department"), Prediction.created_at, Prediction.probability, Prediction.prediction,
                    Prediction.details, ReviewFlag.reasons)
             .select_from(Prediction).join(Study, Prediction.study_id == Study.id)
             .join(Batch, Study.batch_id == Batch.id).outerjoin(Department, Batch.department_id == Department.id)
             .outerjoin(ReviewFlag, ReviewFlag.study_id == Study.id)
             .where(Prediction.created_at >= since, Study.duplicate_of_id.is_(None)))
    if department is not None:
        query = query.where(name == department)
    groups: dict[tuple[str, str], list] = {}
    for row in session.execute(query):
        year, week, _ = as_utc(row.created_at).isocalendar()
        groups.setdefault((row.department, f"{year}-W{week:02d}"), []).append(row)
    return [_week(department, week, group, reference) for (department, week), group in sorted(groups.items())]


def _week(department: str, week: str, rows: list, reference: Reference) -> Week:
    result = Week(department, week, len(rows),
                  call_rate=float(np.mean([row.prediction == "PNEUMONIA" for row in rows])),
                  out_of_scope_rate=float(np.mean([FlagReason.OUT_OF_SCOPE in (row.reasons or []) for row in rows])))
    if result.out_of_scope_rate > 2 * reference.out_of_scope_rate + OUT_OF_SCOPE_EXCESS:
        result.warnings.append(f"out-of-scope rate {result.out_of_scope_rate:.1%} against "
                               f"{reference.out_of_scope_rate:.1%} on validation")
    if len(rows) < MIN_STUDIES:
        return result
    for name in FEATURES:
        values = [row.probability if name == "probability" else ((row.details or {}).get("stats") or {}).get(name)
                  for row in rows]
        values = np.array([value for value in values if value is not None], np.float64)
        if len(values) >= MIN_STUDIES:
            result.psi[name] = round(reference.psi(name, values), 4)
    shifted = [name for name, value in result.psi.items() if value >= PSI_SHIFT]
    if shifted:
        result.warnings.append("shifted from validation (PSI >= 0.25): " + ", ".join(shifted))
    return result
