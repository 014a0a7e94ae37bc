"""FHIR R4 out: one DiagnosticReport per radiology study (studies.results), with contained Observations.

The report is based on the order by its accession number (`basedOn` a ServiceRequest identified by ACSN),
effective at the acquisition time, versioned (`meta.versionId` = the study result's version) and moves
`registered` → `preliminary` → `final` → `amended`/`corrected`. Out of scope or not applicable: no pneumonia
code anywhere. The reviewer's decision is the coded conclusion when there is one; no patient identity.
"""
import logging
from datetime import datetime

from sqlalchemy.orm import Session

from db.models import FlagStatus, ReportStatus, Review, StudyResult, User, as_utc
from studies.results import CALL_CODES

logger = logging.getLogger(__name__)

SYSTEM = "urn:pneumoscreen"  # our own codes: there is no LOINC code for a model's pneumonia probability
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
# Reviewer decisions: SNOMED findings; "unreadable" has no finding code, so it is our own code.
DECISIONS = {"pneumonia": (SNOMED, *CALL_CODES["PNEUMONIA"]), "normal": (SNOMED, *CALL_CODES["NORMAL"]),
             "unreadable": (SYSTEM, "unreadable", "Image unreadable for this screening")}
ACCESSION_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN",
                              "display": "Accession ID"}]}
OUT_OF_SCOPE_TEXT = {
    "out_of_scope": "Out of scope: no frontal chest radiograph of a child the model may be trusted on.",
    "not_applicable": "Not applicable: no image of this study is a chest radiograph the service screens.",
    "error": "No frontal film of this study could be read.",
    "pending": "Images are still being read.",
}


def report_id(result: StudyResult) -> str:
    return f"study-result-{result.id}"


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


def diagnostic_report(session: Session, result: StudyResult) -> dict:
    """The FHIR R4 DiagnosticReport of one study result."""
    images = result.images
    device = f"pneumoscreen {result.model_version}" if result.model_version else "pneumoscreen"
    settled = result.status in (ReportStatus.FINAL, ReportStatus.AMENDED, ReportStatus.CORRECTED)
    obs_status = "final" if settled else "preliminary"
    contained, conclusion, conclusion_codes = [], [], []
    if result.scope == "in_scope":
        contained.append(_observation(
            "probability", obs_status, _concept("Pneumonia probability (screening model)", SYSTEM,
                                                "pneumonia-probability"), device,
            valueQuantity={"value": round(result.probability, 4), "unit": "probability", "system": UCUM,
                           "code": "1"},
            referenceRange=[{"high": {"value": result.threshold, "system": UCUM, "code": "1"},
                             "text": "call threshold"}]))
        contained.append(_observation(
            "call", obs_status, _concept("Pneumonia screening call", SYSTEM, "pneumonia-call"), device,
            valueCodeableConcept=_concept(result.call, SNOMED, *CALL_CODES[result.call])))
        conclusion.append(f"Model call {result.call} (probability {result.probability:.3f}, threshold "
                          f"{result.threshold:.3f}) from image {result.decided_by_image_id}.")
        if result.review_decision is None:
            conclusion_codes.append(_concept(f"Model call: {result.call}", SNOMED, *CALL_CODES[result.call]))
    else:
        conclusion.append(OUT_OF_SCOPE_TEXT.get(result.scope, result.scope))
    flagged = [image for image in images if image.flag is not None]
    if flagged:
        contained.append(_review_observation(session, result, flagged, device))
        reasons = sorted({reason for image in flagged for reason in image.flag.reasons})
        conclusion.append(f"Flagged for review ({', '.join(reasons)}): " + (
            f"reviewer decision {result.review_decision}." if result.review_decision else "awaiting a reviewer."))
    if result.review_decision is not None:
        conclusion_codes.append(_concept(f"Reviewer: {result.review_decision}", *DECISIONS[result.review_decision]))
    errors = [f"image {image.id}: {image.error}" for image in images if image.error]
    if errors:
        conclusion.append("Could not be read: " + "; ".join(errors))
    report = {
        "resourceType": "DiagnosticReport", "id": report_id(result),
        "meta": {"versionId": str(result.version), "lastUpdated": _when(result.updated_at)},
        "status": result.status,
        "identifier": [{"system": f"{SYSTEM}:study-result", "value": str(result.id)}],
        "category": [_concept("Radiology", "http://terminology.hl7.org/CodeSystem/v2-0074", "RAD")],
        "code": _code(images),
        "effectiveDateTime": _when(result.acquired_at or result.created_at),
        "performer": [{"display": device}],
        "conclusion": " ".join(conclusion),
    }
    if result.accession_number:
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": ACCESSION_TYPE, "value": result.accession_number}}]
    if result.status != ReportStatus.REGISTERED:
        report["issued"] = _when(result.updated_at)
    if conclusion_codes:
        report["conclusionCode"] = conclusion_codes
    if contained:
        report["contained"] = contained
        report["result"] = [{"reference": f"#{obs['id']}"} for obs in contained]
    if result.study_instance_uid:
        report["imagingStudy"] = [{"identifier": {"system": "urn:dicom:uid",
                                                  "value": f"urn:oid:{result.study_instance_uid}"}}]
    return report


def _code(images: list) -> dict:
    """LOINC for the examination: a single view, or chest views."""
    if len(images) == 1:
        return _concept("XR Chest Single view (AI-assisted pneumonia screening)", LOINC, "36554-4",
                        "XR Chest Single view")
    return _concept("XR Chest Views (AI-assisted pneumonia screening)", LOINC, "30745-4", "XR Chest Views")


def _review_observation(session: Session, result: StudyResult, flagged: list, device: str) -> dict:
    code = _concept("Radiologist review of a flagged call", SYSTEM, "review")
    reviews = sorted((review for image in flagged for review in image.flag.reviews), key=lambda review: review.id)
    if not reviews:
        return _observation("review", "registered", code, device, valueString="awaiting review")
    latest: Review = reviews[-1]
    open_flags = any(image.flag.status == FlagStatus.OPEN for image in flagged)
    observation = _observation(
        "review", "preliminary" if open_flags else ("amended" if len(reviews) > 1 else "final"), code, device,
        valueCodeableConcept=_concept(latest.decision, *DECISIONS[latest.decision]),
        issued=_when(latest.created_at))
    reviewer = session.get(User, latest.reviewer_id)
    observation["performer"] = [{"display": reviewer.username if reviewer else f"user {latest.reviewer_id}"}]
    if latest.note:
        observation["note"] = [{"text": latest.note}]
    return observation
