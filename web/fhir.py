"""FHIR R4 out: a study's DiagnosticReport (studies.fhir), by study result or by any of its images."""
import logging

from flask import Blueprint, jsonify

from studies.fhir import diagnostic_report
from web.auth import roles_required
from web.context import db_session
from web.queries import visible_result, visible_study

logger = logging.getLogger(__name__)
bp = Blueprint("fhir", __name__, url_prefix="/api/v1")


@bp.get("/results/<int:result_id>/fhir")
@roles_required("uploader", "reviewer", "admin")
def result_fhir(result_id: int):
    result = visible_result(db_session(), result_id)
    if result is None:
        return jsonify(error="no such study result"), 404
    return _fhir(result)


@bp.get("/studies/<int:study_id>/fhir")
@roles_required("uploader", "reviewer", "admin")
def study_fhir(study_id: int):
    """The report of the radiology study this image belongs to (the same report for each of its images)."""
    study = visible_study(db_session(), study_id)
    if study is None or study.study_result is None:
        return jsonify(error="no such study"), 404
    return _fhir(study.study_result)


def _fhir(result):
    response = jsonify(diagnostic_report(db_session(), result))
    response.mimetype = "application/fhir+json"
    response.headers["ETag"] = f'W/"{result.version}"'
    return response
