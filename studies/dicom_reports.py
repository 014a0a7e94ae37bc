"""A study result as DICOM objects for the PACS: a Comprehensive SR and a Secondary Capture, in the original study.

Why these objects and this library:
- Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) built with highdicom's content items, laid out like TID 2000
  (Basic Diagnostic Imaging Report: Findings, Impressions). A TID 1500 measurement report would fit measurements
  tied to regions; ours is a classification with free-text flag reasons, a reviewer's decision and a
  "not applicable" answer, which TID 1500's coded-only evaluations cannot carry. highdicom checks value types,
  relationships and the SR document modules as it builds them, and every PACS viewer shows a Comprehensive SR.
- Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7), 8-bit RGB: the heatmap is colour, and plain SC is
  the capture object every PACS viewer displays (multi-frame SC buys nothing for one picture).
UIDs come from (study UID, result id, version, kind), so sending the same version again makes the same instance and
the PACS keeps one copy; a new version is a new instance in the same series. Patient name, id and birth date are
left empty (type 2): the service does not keep them.
"""
import io
import logging
from datetime import timedelta, timezone

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage import Storage
from db.models import Department, OutboundMessage, OutboundState, ReportStatus, Study, StudyResult, User, as_utc
from studies.pictures import picture
from studies.results import CALL_CODES
from studies.reviews import explain_flag

logger = logging.getLogger(__name__)

MANUFACTURER = "pneumoscreen"
# Read from the film's stored file: the study rows do not keep them.
HEADER_KEYWORDS = ("StudyTime", "PatientOrientation", "TimezoneOffsetFromUTC")
DISCLAIMER = "AI screening \u2014 not a diagnosis"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SC_SIDE = 1024  # the film is scaled to this longest side so the burnt-in text stays legible
HEAT_OPACITY = 0.7
CALLS = {call: hd.sr.CodedConcept(code, "SCT", display) for call, (code, display) in CALL_CODES.items()}
# No standard concept names these; "99" coding schemes are private by DICOM's rules (PS3.16 8.2).
FLAG_REASON = hd.sr.CodedConcept("flag-reason", "99PNEUMOSCREEN", "Reason for human review")
REPORT_STATUS = hd.sr.CodedConcept("report-status", "99PNEUMOSCREEN", "Report status")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
COMPLETE = (ReportStatus.FINAL, ReportStatus.AMENDED, ReportStatus.CORRECTED, ReportStatus.CANCELLED)
SCOPE_TEXT = {"out_of_scope": "out of scope for this model (not a pediatric frontal chest radiograph)",
              "not_applicable": "not applicable (no image this model screens)",
              "pending": "not read yet", "error": "no image could be read"}


def instance_uid(result: StudyResult, kind: str, version: int | None = None) -> str:
    """The same (study, result, version, kind) always gives the same UID; the study UID keeps sites apart."""
    version = result.version if version is None else version
    return generate_uid(entropy_srcs=[result.study_instance_uid, str(result.id), str(version), kind])


def series_uid(result: StudyResult, kind: str) -> str:
    """One series per result and kind: every version of the SR (or SC) lands in it."""
    return generate_uid(entropy_srcs=[result.study_instance_uid, str(result.id), kind, "series"])


def structured_report(session: Session, storage: Storage, result: StudyResult) -> Dataset:
    """The result as a Comprehensive SR in the original study, referencing the study's images."""
    images = _referenced(result)
    header = _original_header(storage, images[0])
    deciding = session.get(Study, result.decided_by_image_id) if result.decided_by_image_id else None
    reviewer = session.get(User, result.reviewer_id) if result.reviewer_id and result.review_decision else None
    department = session.get(Department, result.department_id) if result.department_id else None
    complete = result.status in COMPLETE
    verified = complete and reviewer is not None
    sr = hd.sr.ComprehensiveSR(
        evidence=[_evidence(result, image, header) for image in images],
        content=_content(result, deciding, reviewer),
        series_instance_uid=series_uid(result, "sr"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid(result, "sr"), instance_number=result.version,
        manufacturer=MANUFACTURER, is_complete=complete, is_final=complete, is_verified=verified,
        verifying_observer_name=_person_name(reviewer.username) if verified else None,
        verifying_organization=(department.name if department else MANUFACTURER) if verified else None,
        previous_versions=_previous_srs(session, result), specific_character_set="ISO_IR 192")
    sr.SeriesDescription = "pneumoscreen AI screening report"
    _equipment_and_times(sr, result, deciding, header)
    return sr


def _referenced(result: StudyResult) -> list[Study]:
    if not result.study_instance_uid:
        raise ValueError(f"study result {result.id} is not a DICOM study: it has no StudyInstanceUID for an SR/SC")
    images = [image for image in result.images
              if image.sop_class_uid and image.sop_instance_uid and image.series_instance_uid]
    if not images:
        raise ValueError(f"study result {result.id} has no image with SOP class, series and instance UIDs")
    return images


def _evidence(result: StudyResult, image: Study, header: dict) -> Dataset:
    """What highdicom copies the patient and study modules from: our rows, never the stored patient identity."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = image.sop_class_uid, image.sop_instance_uid
    ds.StudyInstanceUID = result.study_instance_uid
    ds.SeriesInstanceUID = image.series_instance_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "", "", ""
    ds.PatientSex = _first(result, "patient_sex") or ""
    ds.AccessionNumber = result.accession_number or _first(result, "accession_number") or ""
    ds.StudyID, ds.ReferringPhysicianName = "", ""
    ds.StudyDate = result.study_date or _first(result, "study_date") or ""
    ds.StudyTime = header.get("StudyTime", "")
    if age := _first(result, "patient_age"):
        ds.PatientAge = age
    return ds


def _original_header(storage: Storage, image: Study) -> dict:
    """HEADER_KEYWORDS from the stored file (the rows do not keep them); empty when it cannot be read."""
    try:
        ds = pydicom.dcmread(storage.path(image.storage_key), stop_before_pixels=True, force=True,
                             specific_tags=list(HEADER_KEYWORDS))
        return {keyword: ds[keyword].value for keyword in HEADER_KEYWORDS if keyword in ds and ds[keyword].value}
    except Exception:  # noqa: BLE001 - a header we cannot read leaves these type 2 attributes empty
        logger.info("image %s: no study time or orientation from its stored file", image.id)
        return {}


def _first(result: StudyResult, column: str) -> str | None:
    return next((getattr(image, column) for image in result.images if getattr(image, column)), None)


def _content(result: StudyResult, deciding: Study | None, reviewer: User | None) -> hd.sr.ContainerContentItem:
    # Laid out like TID 2000 but not claiming it (no ContentTemplateSequence): private codes are in the tree.
    root = hd.sr.ContainerContentItem(codes.LN.DiagnosticImagingReport)
    model = deciding.prediction.model_name if deciding is not None and deciding.prediction else MANUFACTURER
    root.ContentSequence = [
        *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")),
        *hd.sr.ObserverContext(codes.DCM.Device, hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[MANUFACTURER, model, result.model_version or ""]), name=MANUFACTURER,
            manufacturer_name=MANUFACTURER, model_name=model[:64])),
        _findings(result, deciding), _impressions(result, reviewer)]
    return root


def _findings(result: StudyResult, deciding: Study | None) -> hd.sr.ContainerContentItem:
    findings = hd.sr.ContainerContentItem(codes.DCM.Findings, relationship_type="CONTAINS")
    items = []
    in_scope = result.scope == "in_scope" and result.call in CALLS
    if in_scope:
        call = hd.sr.CodeContentItem(codes.DCM.Finding, CALLS[result.call], relationship_type="CONTAINS")
        if deciding is not None and deciding.sop_class_uid and deciding.sop_instance_uid:
            call.ContentSequence = [hd.sr.ImageContentItem(
                codes.DCM.SourceImage, deciding.sop_class_uid, deciding.sop_instance_uid,
                relationship_type="INFERRED FROM")]
        items.append(call)
    else:
        items.append(_text(codes.DCM.Finding, f"No AI call: {SCOPE_TEXT.get(result.scope, result.scope)}"))
    for name, value in ((codes.DCM.Probability, result.probability), (codes.DCM.ThresholdValue, result.threshold)):
        if value is not None:
            items.append(hd.sr.NumContentItem(name, float(value), NO_UNITS, relationship_type="CONTAINS"))
    prediction = deciding.prediction if deciding is not None else None
    if prediction is not None:
        items += [_text(codes.DCM.AlgorithmName, prediction.model_name),
                  _text(codes.DCM.AlgorithmVersion, prediction.model_version)]
    items += [_text(FLAG_REASON, f"{reason}: {text}") for reason, text in _flag_reasons(result)]
    findings.ContentSequence = items
    return findings


def _flag_reasons(result: StudyResult) -> list[tuple[str, str]]:
    """Each image's flag reasons in words, each once, deciding image first."""
    images = sorted(result.images, key=lambda image: image.id != result.decided_by_image_id)
    seen = {}
    for image in images:
        if image.flag is not None:
            for reason, text in explain_flag(image):
                seen.setdefault(reason, text)
    return list(seen.items())


def _impressions(result: StudyResult, reviewer: User | None) -> hd.sr.ContainerContentItem:
    impressions = hd.sr.ContainerContentItem(codes.DCM.Impressions, relationship_type="CONTAINS")
    items = []
    if reviewer is not None:
        items += hd.sr.ObserverContext(codes.DCM.Person, hd.sr.PersonObserverIdentifyingAttributes(
            _person_name(reviewer.username), login_name=reviewer.username[:64]))
        items.append(_text(codes.DCM.Impression, f"Reviewer decision: {result.review_decision}"))
    else:
        items.append(_text(codes.DCM.Impression, f"{DISCLAIMER}; no reviewer decision"))
    items.append(_text(REPORT_STATUS, f"{result.status} (version {result.version})"))
    impressions.ContentSequence = items
    return impressions


def _text(name, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name, value, relationship_type="CONTAINS")


def _person_name(username: str) -> str:
    """A login name as a DICOM PN: one family-name component (the trailing caret says so), PN's separators dropped."""
    return ("".join(ch for ch in username if ch not in "^=\\")[:63] or "reviewer") + "^"


def _previous_srs(session: Session, result: StudyResult) -> list[Dataset] | None:
    """The latest earlier SR that reached the PACS (PredecessorDocumentsSequence), if one did."""
    version = session.scalar(
        select(OutboundMessage.result_version)
        .where(OutboundMessage.study_result_id == result.id, OutboundMessage.kind == "sr",
               OutboundMessage.state == OutboundState.SENT, OutboundMessage.result_version < result.version)
        .order_by(OutboundMessage.result_version.desc()).limit(1))
    if version is None:
        return None
    previous = Dataset()
    previous.SOPClassUID = ComprehensiveSRStorage
    previous.SOPInstanceUID = instance_uid(result, "sr", version)
    previous.StudyInstanceUID, previous.SeriesInstanceUID = result.study_instance_uid, series_uid(result, "sr")
    return [previous]


def _equipment_and_times(ds: Dataset, result: StudyResult, deciding: Study | None, header: dict) -> None:
    """Software versions, and every date and time from the result (not the clock): a retry is the same bytes.

    Times are in the film's zone when its header names one (TimezoneOffsetFromUTC covers the copied StudyTime
    too), else in the site's local time, which is how DICOM reads a time without an offset.
    """
    prediction = deciding.prediction if deciding is not None else None
    ds.SoftwareVersions = [MANUFACTURER] + ([prediction.model_version[:64]] if prediction is not None else [])
    if prediction is not None:
        ds.ManufacturerModelName = prediction.model_name[:64]
    offset = str(header.get("TimezoneOffsetFromUTC", ""))
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = (int(offset[1:3]) * 60 + int(offset[3:])) * (1 if offset[0] == "+" else -1)
        moment = as_utc(result.updated_at).astimezone(timezone(timedelta(minutes=minutes)))
        ds.TimezoneOffsetFromUTC = offset
    else:
        moment = as_utc(result.updated_at).astimezone()
    for date_key, time_key in (("ContentDate", "ContentTime"), ("InstanceCreationDate", "InstanceCreationTime"),
                               ("DateOfSecondaryCapture", "TimeOfSecondaryCapture")):
        if date_key in ds:
            setattr(ds, date_key, moment.strftime("%Y%m%d"))
            setattr(ds, time_key, moment.strftime("%H%M%S"))
    for observer in ds.get("VerifyingObserverSequence", []):
        observer.VerificationDateTime = moment.strftime("%Y%m%d%H%M%S")
    for equipment in ds.get("ContributingEquipmentSequence", []):  # highdicom names itself, with the clock
        equipment.ContributionDateTime = moment.strftime("%Y%m%d%H%M%S")


def secondary_capture(session: Session, storage: Storage, result: StudyResult) -> Dataset | None:
    """The deciding film with its heatmap and the call burnt in, as an RGB Secondary Capture; None without one."""
    if result.decided_by_image_id is None:
        return None
    deciding = session.get(Study, result.decided_by_image_id)
    if deciding is None:
        return None
    _referenced(result)  # a DICOM study, or ValueError
    header = _original_header(storage, deciding)
    reference = _evidence(result, deciding, header)
    orientation = header.get("PatientOrientation")
    sc = hd.sc.SCImage(
        pixel_array=render(storage, deciding, result), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=result.study_instance_uid,
        series_instance_uid=series_uid(result, "sc"), series_number=SC_SERIES_NUMBER,
        sop_instance_uid=instance_uid(result, "sc"), instance_number=result.version, manufacturer=MANUFACTURER,
        patient_id="", patient_name="", patient_birth_date="", patient_sex=reference.PatientSex or None,
        accession_number=reference.AccessionNumber, study_id="", study_date=reference.StudyDate or None,
        study_time=reference.StudyTime or None, referring_physician_name="",
        patient_orientation=tuple(orientation) if orientation and len(orientation) == 2 else ("L", "F"),
        specific_character_set="ISO_IR 192")
    if not (orientation and len(orientation) == 2):
        sc.PatientOrientation = ""  # unknown (type 2): never guess which way a film faces
    if "PatientAge" in reference:
        sc.PatientAge = reference.PatientAge
    sc.ConversionType = "WSD"  # made by a workstation, not digitised
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "pneumoscreen AI heatmap"
    sc.ImageComments = DISCLAIMER
    sc.DerivationDescription = "Grad-CAM heatmap over the film, with the AI screening call burnt in"
    if deciding.sop_class_uid and deciding.sop_instance_uid:
        source = Dataset()
        source.ReferencedSOPClassUID = deciding.sop_class_uid
        source.ReferencedSOPInstanceUID = deciding.sop_instance_uid
        sc.SourceImageSequence = [source]
    _equipment_and_times(sc, result, deciding, header)
    return sc


def render(storage: Storage, image: Study, result: StudyResult) -> np.ndarray:
    """The film view with the heatmap screened over it and a band of text below, as RGB uint8."""
    view, heatmap = picture(storage, image, "view"), picture(storage, image, "heatmap")  # a copy: its original's
    if view is None:
        raise ValueError(f"image {image.id} has no film view: it was never screened, or its original is gone")
    film = Image.open(view).convert("RGB")
    scale = SC_SIDE / max(film.size)
    film = film.resize((round(film.width * scale), round(film.height * scale)), Image.Resampling.BILINEAR)
    pixels = np.asarray(film, dtype=np.float32) / 255.0
    if heatmap is not None:
        heat = Image.open(heatmap).convert("RGB").resize(film.size, Image.Resampling.BILINEAR)
        # Screen blend, as the workstation shows it (black heat leaves the film as it is), at HEAT_OPACITY so the
        # anatomy under the hottest spot still shows.
        pixels = 1.0 - (1.0 - pixels) * (1.0 - HEAT_OPACITY * np.asarray(heat, dtype=np.float32) / 255.0)
    lines = _caption(image, result, heatmap=heatmap is not None)
    font = ImageFont.load_default(size=max(14, film.width // 36))
    line_height = int(font.size * 1.35)
    canvas = Image.new("RGB", (film.width, film.height + line_height * len(lines) + line_height // 2))
    canvas.paste(Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (text, colour) in enumerate(lines):
        draw.text((line_height // 2, film.height + line_height // 4 + row * line_height), text, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _caption(image: Study, result: StudyResult, heatmap: bool) -> list[tuple[str, tuple[int, int, int]]]:
    prediction = image.prediction
    if result.scope == "in_scope" and result.call:
        call = f"AI call: {result.call}   probability {result.probability:.2f}   threshold {result.threshold:.2f}"
    else:
        call = f"No AI call: {SCOPE_TEXT.get(result.scope, result.scope)}"
    model = f"Model: {prediction.model_name} {prediction.model_version}" if prediction else "Model: unknown"
    status = f"Report {result.status}, version {result.version}"
    if result.review_decision:
        status += f"; reviewer decision: {result.review_decision}"
    heat = "" if heatmap else "   (no heatmap for this film)"
    # Pillow's built-in font has no em dash.
    return [(DISCLAIMER.replace("\u2014", "-"), (255, 210, 0)), (call, (255, 255, 255)),
            (model + heat, (200, 200, 200)), (status, (200, 200, 200))]


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes with file meta, as a PACS or a file reader gets them."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

