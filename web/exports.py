"""Results out as CSV: one row per image of a batch, with its radiology study's result and the review.

UTF-8 with a byte-order mark (Excel on Windows reads it as UTF-8 then), times in ISO 8601 with their zone,
every cell defused against spreadsheet formulas (core.csvcells), streamed a page of images at a time.
"""
import csv
import io
import logging
from datetime import datetime
from typing import Iterator

from flask import Blueprint, Response, jsonify, stream_with_context
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from core.csvcells import safe_cell
from core.services import current_services
from db.models import Department, Review, ReviewFlag, Study, as_utc
from web.auth import roles_required
from web.context import db_session
from web.queries import visible_batch

logger = logging.getLogger(__name__)
bp = Blueprint("exports", __name__, url_prefix="/api/v1")

BOM = "\ufeff"
PAGE = 500  # images read and written at a time: memory stays flat however large the batch
COLUMNS = ["batch_id", "department", "study_id", "filename", "study_instance_uid", "series_instance_uid",
           "sop_instance_uid", "accession_number", "study_date", "patient_age", "patient_sex", "modality",
           "view_position", "status", "not_applicable", "error", "prediction", "probability", "threshold",
           "model_version", "study_call", "study_scope", "study_status", "flagged", "flag_reason", "review_status",
           "reviewer", "review_decision", "review_note", "decided_at", "uploaded_at", "finished_at"]


@bp.get("/batches/<int:batch_id>.csv")
@roles_required("uploader", "reviewer", "admin")
def batch_csv(batch_id: int):
    batch = visible_batch(db_session(), batch_id)
    if batch is None:
        return jsonify(error="no such batch"), 404
    department = db_session().get(Department, batch.department_id) if batch.department_id else None
    lines = csv_lines(batch.id, department.name if department else "")
    return Response(stream_with_context(lines), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="batch-{batch.id}.csv"'})


def csv_lines(batch_id: int, department: str) -> Iterator[str]:
    """The BOM and header, then the batch's images a page at a time, each page in a session of its own."""
    yield BOM + _line(COLUMNS)
    last_id = 0
    while True:
        with current_services().sessions() as session:
            studies = session.scalars(
                select(Study).where(Study.batch_id == batch_id, Study.id > last_id).order_by(Study.id).limit(PAGE)
                .options(selectinload(Study.prediction), selectinload(Study.study_result),
                         selectinload(Study.flag).selectinload(ReviewFlag.reviews)
                         .selectinload(Review.reviewer))).all()
            if not studies:
                return
            yield "".join(_line(csv_row(study, batch_id, department)) for study in studies)
            last_id = studies[-1].id


def _line(cells: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([safe_cell(cell) for cell in cells])
    return buffer.getvalue()


def _time(moment: datetime | None) -> str:
    return as_utc(moment).isoformat() if moment else ""


def _date(value: str | None) -> str:
    """DICOM DA (YYYYMMDD) as ISO 8601; anything else as it came."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def csv_row(study: Study, batch_id: int, department: str) -> list:
    """One image's CSV cells (safe_cell defuses formulas when the line is written)."""
    prediction, flag, result = study.prediction, study.flag, study.study_result
    latest = flag.latest if flag else None
    return [batch_id, department, study.id, study.filename, study.study_instance_uid, study.series_instance_uid,
            study.sop_instance_uid, study.accession_number, _date(study.study_date), study.patient_age,
            study.patient_sex, study.modality, study.view_position, study.status, study.not_applicable,
            study.error, prediction.prediction if prediction else "",
            f"{prediction.probability:.4f}" if prediction else "", prediction.threshold if prediction else "",
            prediction.model_version if prediction else "", result.call if result else "",
            result.scope if result else "", result.status if result else "", int(flag is not None),
            ",".join(flag.reasons) if flag else "", flag.status if flag else "",
            latest.reviewer.username if latest else "", latest.decision if latest else "",
            latest.note if latest else "", _time(latest.created_at if latest else None), _time(study.created_at),
            _time(study.finished_at)]
