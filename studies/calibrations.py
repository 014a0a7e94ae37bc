"""Departments' own operating points, from their own labelled films.

A labelled sample (NORMAL/ and PNEUMONIA/ folders, or a zip holding them) is screened as the worker
would, the point is chosen by conformal risk control (models.operating_point), and stored versioned
and audited. The CLI stores it active at once; the portal stores a proposal an admin accepts. One
point is active per department; activating an earlier version rolls back. The worker and
`pneumoscreen screen --department` read the active one.
"""
import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.services import Services
from db.accounts import ensure_department, named
from db.models import Department, SiteCalibration, utcnow
from db.session import audit
from models.imaging import ImageDecodeError
from models.operating_point import Choice, OperatingPoint, choose, roc_png
from models.screener import BatchOutput, Screener, decode_film
from studies.files import Item, expand, walk

logger = logging.getLogger(__name__)

LABELS = ("NORMAL", "PNEUMONIA")  # folder names, label 0 and 1
CHUNK = 64


@dataclass
class Assessment:
    """What a labelled sample says: the chosen point, its ROC picture, the data's hash, what was skipped."""

    choice: Choice
    roc_png: bytes
    data_sha256: str
    model_version: str
    skipped: list[str]


def folder_sample(folder: Path) -> Iterator[tuple[int, Item]]:
    """(label, item) for every file under folder/NORMAL and folder/PNEUMONIA."""
    for label, name in enumerate(LABELS):
        if not (folder / name).is_dir():
            raise ValueError(f"{folder / name} is missing: put the labelled films in NORMAL/ and PNEUMONIA/ folders")
    for label, name in enumerate(LABELS):
        for item in walk([folder / name]):
            yield label, item


def zip_sample(name: str, data: bytes) -> Iterator[tuple[int, Item]]:
    """(label, item) for the films of a zip, labelled by a NORMAL or PNEUMONIA folder in their path."""
    for item in expand(name, data):
        folders = {part.upper() for part in item.name.split("/")[1:-1]}
        labels = [label for label, folder in enumerate(LABELS) if folder in folders]
        if len(labels) == 1:
            yield labels[0], item
        elif item.error is None:
            yield -1, Item(item.name, error="not inside exactly one NORMAL/ or PNEUMONIA/ folder")
        else:
            yield -1, item


def assess_sample(screener: Screener, sample: Iterable[tuple[int, Item]], department: str,
                  miss_rate: float) -> Assessment:
    """Screen a labelled sample and choose its operating point; ValueError says what the sample lacks."""
    outputs, labels, skipped, digest = [], [], [], hashlib.sha256()
    sample = iter(sample)
    while chunk := list(itertools.islice(sample, CHUNK)):
        images = []
        for label, item in chunk:
            image = _decode(item) if label >= 0 else item.error
            if isinstance(image, str):
                skipped.append(f"{item.name}: {image}")
                continue
            images.append(image)
            labels.append(label)
            digest.update(f"{LABELS[label]}/{hashlib.sha256(item.data).hexdigest()}\n".encode())
        if images:
            outputs.append(screener.outputs(images).without_images())
    if not outputs:
        raise ValueError("no readable films in NORMAL/ or PNEUMONIA/")
    out, labels = BatchOutput.concat(outputs), np.array(labels)
    choice = choose(out.probability, labels, lambda threshold: screener.flagged_at(out, threshold), miss_rate)
    png = roc_png(out.probability, labels, choice.point,
                  f"{department}: {choice.n_pneumonia} pneumonia, {choice.n_normal} normal films")
    return Assessment(choice, png, digest.hexdigest(), screener.version, skipped)


def _decode(item: Item) -> np.ndarray | str:
    if item.error:
        return item.error
    if item.not_applicable:
        return f"not screened: {item.not_applicable}"
    try:
        return decode_film(item.data)
    except ImageDecodeError as exc:
        return str(exc)


def save_calibration(session: Session, department_name: str, assessment: Assessment, actor_id: int | None,
                     by: str, accept: bool) -> SiteCalibration:
    """Store the assessment as the department's next version: active at once when `accept`, else a proposal."""
    department = ensure_department(session, department_name, actor_id)
    latest = session.scalar(select(func.max(SiteCalibration.version))
                            .where(SiteCalibration.department_id == department.id)) or 0
    choice = assessment.choice
    record = SiteCalibration(
        department_id=department.id, version=latest + 1, active=False, threshold=choice.point.threshold,
        band_low=choice.point.band_low, miss_rate_target=choice.miss_rate_target, n_normal=choice.n_normal,
        n_pneumonia=choice.n_pneumonia, sensitivity=choice.sensitivity, specificity=choice.specificity,
        miss_rate=choice.miss_rate, miss_rate_upper=choice.miss_rate_upper, review_load=choice.review_load,
        model_version=assessment.model_version, data_sha256=assessment.data_sha256, roc_png=assessment.roc_png,
        created_by=actor_id)
    session.add(record)
    session.flush()
    audit(session, actor_id, "calibration.create", "site_calibration", record.id, department=department.name,
          version=record.version, threshold=round(record.threshold, 6), band_low=round(record.band_low, 6),
          miss_rate_target=record.miss_rate_target, data_sha256=assessment.data_sha256, by=by,
          skipped=len(assessment.skipped))
    if accept:
        _activate(session, record, actor_id, by)
    return record


def propose_from_zip(services: Services, screener: Screener, storage_key: str, filename: str, department: str,
                     miss_rate: float, actor_id: int) -> SiteCalibration | None:
    """Screen an uploaded labelled zip and store a proposal for an admin to accept; a sample that cannot
    support the target is recorded as `calibration.failed` with the reason (the portal shows it).

    The zip (patients' films, DICOM headers as sent) is deleted once its outcome is recorded: the proposal keeps
    only counts and the curve. Until then it stays, so a retried task (database down) finds it again."""
    try:
        sample = services.storage.get(storage_key)
    except FileNotFoundError:  # assessed already: this task delivered twice, or the same zip sent twice at once
        with services.sessions.begin() as session:
            audit(session, actor_id, "calibration.failed", "department", None, department=department,
                  filename=filename, reason="the uploaded sample was already assessed and deleted; "
                                            "send it again if no proposal came of it")
        return None
    try:
        assessment = assess_sample(screener, zip_sample(filename, sample), department, miss_rate)
    except ValueError as exc:
        with services.sessions.begin() as session:
            audit(session, actor_id, "calibration.failed", "department", None, department=department,
                  filename=filename, reason=str(exc))
        record = None
    else:
        with services.sessions.begin() as session:
            record = save_calibration(session, department, assessment, actor_id, "portal", accept=False)
    services.storage.path(storage_key).unlink(missing_ok=True)
    return record


def activate(session: Session, department_name: str, version: int, actor_id: int | None, by: str) -> SiteCalibration:
    """Make a version the department's active point (accept a proposal, roll back); LookupError when there is none."""
    record = session.scalar(select(SiteCalibration).join(Department)
                            .where(named(department_name), SiteCalibration.version == version))
    if record is None:
        raise LookupError(f"department {department_name!r} has no operating point version {version}")
    _activate(session, record, actor_id, by)
    return record


def _activate(session: Session, record: SiteCalibration, actor_id: int | None, by: str) -> None:
    session.execute(update(SiteCalibration).where(SiteCalibration.department_id == record.department_id)
                    .values(active=False))
    record.active = True
    accepting = record.accepted_at is None
    record.accepted_at = record.accepted_at or utcnow()
    audit(session, actor_id, "calibration.accept" if accepting else "calibration.activate", "site_calibration",
          record.id, department_id=record.department_id, version=record.version, by=by)


def history(session: Session, department_name: str) -> list[SiteCalibration]:
    """A department's operating points, newest first."""
    return list(session.scalars(select(SiteCalibration).join(Department).where(named(department_name))
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
                          .where(named(department_name), SiteCalibration.active.is_(True)))


def point_of(record: SiteCalibration) -> OperatingPoint:
    return OperatingPoint(record.threshold, record.band_low)
