"""FHIR R4 out: a study's result as a DiagnosticReport with Observations (probability, call, review)."""
import logging
from datetime import datetime

from flask import Blueprint, jsonify
from sqlalchemy.orm import Session

from db.models import FlagStatus, Study, StudyStatus, as_utc
from studies.results import study_result
from web.auth import roles_required
from web.context import db_session
from web.queries import visible_study

logger = logging.getLogger(__name__)
bp = Blueprint("fhir", __name__, url_prefix="/api/v1")

SYSTEM = "urn:pneumoscreen"  # our own codes: there is no LOINC code for a model's pneumonia probability
SNOMED = "http://snomed.info/sct"
CALLS = {"PNEUMONIA": (SNOMED, "233604007", "Pneumonia"), "NORMAL": (SNOMED, "17621005", "Normal")}
# registered: not read yet; preliminary: waiting for a reviewer; final: nothing to review or reviewed.
STATUS = {StudyStatus.QUEUED: "registered", StudyStatus.RUNNING: "registered", StudyStatus.ERROR: "cancelled"}


@bp.get("/studies/<int:study_id>/fhir")
@roles_required("uploader", "reviewer", "admin")
def study_fhir(study_id: int):
    study = visible_study(db_session(), study_id)
    if study is None:
        return jsonify(error="no such study"), 404
    response = jsonify(diagnostic_report(db_session(), study))
    response.mimetype = "application/fhir+json"
    return response


def _when(moment: datetime) -> str:
    """FHIR instants need a zone."""
    return as_utc(moment).isoformat()


def _concept(text: str, system: str | None = None, code: str | None = None, display: str | None = None) -> dict:
    concept = {"text": text}
    if code:
        concept["coding"] = [{"system": system, "code": code, "display": display or text}]
    return concept


def _observation(local_id: str, status: str, code: dict, device: str, **value) -> dict:
    return {"resourceType": "Observation", "id": local_id, "status": status, "code": code,
            "device": {"display": device}, **value}


def diagnostic_report(session: Session, study: Study) -> dict:
    """A FHIR R4 DiagnosticReport for one study: contained Observations, no patient identity."""
    prediction, flag = study.prediction, study.flag
    result = study_result(session, study) if study.study_instance_uid else None
    device = f"pneumoscreen {prediction.model_name} {prediction.model_version}" if prediction else "pneumoscreen"
    status = STATUS.get(study.status, "final")
    if status == "final" and flag is not None and flag.status == FlagStatus.OPEN:
        status = "preliminary"
    contained, conclusion = [], []
    if prediction is not None:
        obs_status = "final" if status == "final" else "preliminary"
        contained.append(_observation(
            "probability", obs_status, _concept("Pneumonia probability (screening model)", SYSTEM,
                                                "pneumonia-probability"), device,
            valueQuantity={"value": round(prediction.probability, 4), "unit": "probability",
                           "system": "http://unitsofmeasure.org", "code": "1"},
            referenceRange=[{"high": {"value": prediction.threshold, "system": "http://unitsofmeasure.org",
                                      "code": "1"}, "text": "call threshold"}]))
        contained.append(_observation(
            "call", obs_status, _concept("Pneumonia screening call", SYSTEM, "pneumonia-call"), device,
            valueCodeableConcept=_concept(prediction.prediction, *CALLS.get(prediction.prediction, (None,) * 3))))
        conclusion.append(f"Model call {prediction.prediction} (probability {prediction.probability:.3f}, "
                          f"threshold {prediction.threshold:.3f}).")
    if result is not None and result["scope"] != "in_scope":
        conclusion.append(f"DICOM study {result['scope'].replace('_', ' ')}: no frontal radiograph "
                          "result stands for it.")
    elif result is not None and result.get("decided_by") not in (None, study.id):
        conclusion.append(f"Study call {result['prediction']} from frontal image {result['decided_by']}.")
    if flag is not None:
        contained.append(_review_observation(flag, device))
        conclusion.append(f"Flagged for review ({', '.join(flag.reasons)}): " + (
            f"reviewer decision {flag.latest.decision}." if flag.latest else "awaiting a reviewer."))
    if study.status == StudyStatus.ERROR:
        conclusion.append(f"Could not be read: {study.error}")
    report = {
        "resourceType": "DiagnosticReport", "id": f"study-{study.id}", "status": status,
        "identifier": [{"system": f"{SYSTEM}:study", "value": str(study.id)}],
        "category": [_concept("Radiology", "http://terminology.hl7.org/CodeSystem/v2-0074", "RAD")],
        "code": _concept("Chest X-ray pneumonia screening (AI-assisted)", "http://loinc.org", "18748-4",
                         "Diagnostic imaging study"),
        "effectiveDateTime": _when(study.created_at),
        "performer": [{"display": device}],
        "conclusion": " ".join(conclusion) or "Not read yet.",
    }
    if prediction is not None:
        report["issued"] = _when(prediction.created_at)
    if contained:
        report["contained"] = contained
        report["result"] = [{"reference": f"#{obs['id']}"} for obs in contained]
    if study.study_instance_uid:
        report["imagingStudy"] = [{"identifier": {"system": "urn:dicom:uid",
                                                  "value": f"urn:oid:{study.study_instance_uid}"}}]
    return report


def _review_observation(flag, device: str) -> dict:
    latest = flag.latest
    if latest is None:
        return _observation("review", "registered", _concept("Radiologist review of a flagged call", SYSTEM,
                                                             "review"), device,
                            valueString=f"awaiting review (flagged: {', '.join(flag.reasons)})")
    observation = _observation("review", "final", _concept("Radiologist review of a flagged call", SYSTEM,
                                                           "review"), device,
                               valueCodeableConcept=_concept(latest.decision, SYSTEM, f"review-{latest.decision}"),
                               issued=_when(latest.created_at))
    observation["performer"] = [{"display": latest.reviewer.username}]
    if latest.note:
        observation["note"] = [{"text": latest.note}]
    return observation
