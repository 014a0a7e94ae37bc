"""Results out as CSV: one row per study of a batch, with the DICOM study it belongs to."""
import logging

from flask import Blueprint, Response, jsonify

from core.csvcells import csv_text
from db.models import Study
from web.auth import roles_required
from web.context import db_session
from web.queries import batch_studies, visible_batch

logger = logging.getLogger(__name__)
bp = Blueprint("exports", __name__, url_prefix="/api/v1")

COLUMNS = ["study_id", "filename", "status", "probability", "prediction", "threshold", "flagged",
           "flag_reason", "review_status", "review_decision", "model_version", "study_instance_uid",
           "sop_instance_uid", "modality", "view_position", "error"]


@bp.get("/batches/<int:batch_id>.csv")
@roles_required("uploader", "reviewer", "admin")
def batch_csv(batch_id: int):
    batch = visible_batch(db_session(), batch_id)
    if batch is None:
        return jsonify(error="no such batch"), 404
    studies = batch_studies(db_session(), batch.id)
    return Response(csv_text(COLUMNS, (csv_row(study) for study in studies)), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="batch-{batch.id}.csv"'})


def csv_row(study: Study) -> list:
    """One study's CSV cells (csv_text defuses formulas)."""
    prediction, flag = study.prediction, study.flag
    latest = flag.latest if flag else None
    return [study.id, study.filename, study.status,
            f"{prediction.probability:.4f}" if prediction else "", prediction.prediction if prediction else "",
            prediction.threshold if prediction else "", int(flag is not None), ",".join(flag.reasons) if flag else "",
            flag.status if flag else "", latest.decision if latest else "",
            prediction.model_version if prediction else "", study.study_instance_uid or "",
            study.sop_instance_uid or "", study.modality or "", study.view_position or "", study.error or ""]
