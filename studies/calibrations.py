"""Departments' own operating points: stored versioned and audited, one active per department, rolled back by
activating an earlier version. The worker and `pneumoscreen screen --department` read the active one."""
import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.accounts import ensure_department
from db.models import Department, SiteCalibration
from db.session import audit
from models.operating_point import Choice, OperatingPoint

logger = logging.getLogger(__name__)


def save_calibration(session: Session, department_name: str, choice: Choice, model_version: str,
                     data_sha256: str, roc_png: bytes | None, actor_id: int | None, by: str) -> SiteCalibration:
    """Store `choice` as the department's next version and make it the active one (the department is made if new)."""
    department = ensure_department(session, department_name, actor_id)
    latest = session.scalar(select(func.max(SiteCalibration.version))
                            .where(SiteCalibration.department_id == department.id)) or 0
    session.execute(update(SiteCalibration).where(SiteCalibration.department_id == department.id)
                    .values(active=False))
    record = SiteCalibration(
        department_id=department.id, version=latest + 1, active=True, threshold=choice.point.threshold,
        band_low=choice.point.band_low, miss_rate_target=choice.miss_rate_target, n_normal=choice.n_normal,
        n_pneumonia=choice.n_pneumonia, sensitivity=choice.sensitivity, specificity=choice.specificity,
        miss_rate=choice.miss_rate, miss_rate_upper=choice.miss_rate_upper, review_load=choice.review_load,
        model_version=model_version, data_sha256=data_sha256, roc_png=roc_png, created_by=actor_id)
    session.add(record)
    session.flush()
    audit(session, actor_id, "calibration.create", "site_calibration", record.id, department=department.name,
          version=record.version, threshold=round(record.threshold, 6), band_low=round(record.band_low, 6),
          miss_rate_target=record.miss_rate_target, data_sha256=data_sha256, by=by)
    return record


def activate(session: Session, department_name: str, version: int, actor_id: int | None, by: str) -> SiteCalibration:
    """Make an earlier (or later) version the department's active point; LookupError when there is none."""
    record = session.scalar(select(SiteCalibration).join(Department)
                            .where(Department.name == department_name, SiteCalibration.version == version))
    if record is None:
        raise LookupError(f"department {department_name!r} has no operating point version {version}")
    session.execute(update(SiteCalibration).where(SiteCalibration.department_id == record.department_id)
                    .values(active=False))
    record.active = True
    audit(session, actor_id, "calibration.activate", "site_calibration", record.id, department=department_name,
          version=version, by=by)
    return record


def history(session: Session, department_name: str) -> list[SiteCalibration]:
    """A department's operating points, newest first."""
    return list(session.scalars(select(SiteCalibration).join(Department).where(Department.name == department_name)
                                .order_by(SiteCalibration.version.desc())))


def active_by_department(session: Session, department_ids: set[int | None]) -> dict[int, SiteCalibration]:
    """The active point of each of these departments that has one."""
    ids = {department_id for department_id in department_ids if department_id is not None}
    if not ids:
        return {}
    rows = session.scalars(select(SiteCalibration).where(SiteCalibration.department_id.in_(ids),
                                                         SiteCalibration.active.is_(True)))
    return {row.department_id: row for row in rows}


def active_for(session: Session, department_name: str) -> SiteCalibration | None:
    """The named department's active point, or None (the shipped point applies)."""
    return session.scalar(select(SiteCalibration).join(Department)
                          .where(Department.name == department_name, SiteCalibration.active.is_(True)))


def point_of(record: SiteCalibration) -> OperatingPoint:
    return OperatingPoint(record.threshold, record.band_low)
