"""DICOM study rules: which images the model may read (radiographs, frontal views) and a study's result.

One `studies` row is one image. DICOM images group into a radiology study by StudyInstanceUID.
Scope is decided when a result is recorded (`scope_flag`): every image gets the model's result
stored, and an image the model must not be trusted on is flagged `out_of_scope` for a person:
a non-radiograph modality, an adult patient, or a non-frontal view in a study with no frontal image. A lateral
next to a frontal film is not flagged: the study's result comes from its frontal images, which
`study_result` computes when it is read (the highest frontal probability decides).
"""
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from db.models import Study

logger = logging.getLogger(__name__)

OUT_OF_SCOPE = "out_of_scope"
# Projection radiography: computed, digital, and digitized film. CT, MR, US... are not chest films.
RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG"}
FRONTAL_VIEWS = {"PA", "AP"}
# Adults' films look unlike the pediatric training films (FINDINGS: AUC below 0.5 on them).
ADULT_AGE_YEARS = 16


def age_years(patient_age: str | None) -> float | None:
    """A DICOM age string ('004Y', '018M', '003W', '010D') in years; None when absent or malformed."""
    per_year = {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}
    if not patient_age or len(patient_age) != 4 or not patient_age[:3].isdigit() or patient_age[3] not in per_year:
        return None
    return int(patient_age[:3]) / per_year[patient_age[3]]


def in_age_scope(patient_age: str | None) -> bool:
    """Children only: the model knows 1–5-year-olds' films; an unknown age is given the benefit."""
    age = age_years(patient_age)
    return age is None or age < ADULT_AGE_YEARS


def in_modality_scope(modality: str | None) -> bool:
    """PNG/JPEG uploads have no modality: they are taken as radiographs."""
    return not modality or modality.upper() in RADIOGRAPH_MODALITIES


def is_frontal(view_position: str | None) -> bool:
    """PA or AP; a missing ViewPosition (common on CR) counts as frontal, since nothing says otherwise."""
    return not view_position or view_position.upper() in FRONTAL_VIEWS


def header_in_scope(modality: str | None, patient_age: str | None) -> bool:
    """A radiograph of a child, as far as the header tells (PNG/JPEG uploads have no header)."""
    return in_modality_scope(modality) and in_age_scope(patient_age)


def readable(study: Study) -> bool:
    """An image the model's result can stand for: a child's radiograph in a frontal view."""
    return header_in_scope(study.modality, study.patient_age) and is_frontal(study.view_position)


def scope_flag(session: Session, study: Study, model_flag: str | None) -> str | None:
    """The flag reason to record for this image: out_of_scope, the model's own flag, or None."""
    if not header_in_scope(study.modality, study.patient_age):
        return OUT_OF_SCOPE
    if is_frontal(study.view_position):
        return model_flag
    if _has_frontal_sibling(session, study):
        return None  # the study's frontal images speak for it
    return OUT_OF_SCOPE


def _has_frontal_sibling(session: Session, study: Study) -> bool:
    if not study.study_instance_uid:
        return False
    siblings = session.execute(
        select(Study.modality, Study.view_position)
        .where(Study.study_instance_uid == study.study_instance_uid, Study.id != study.id)).all()
    return any(in_modality_scope(m) and is_frontal(v) for m, v in siblings)


def study_images(session: Session, study: Study) -> list[Study]:
    """The images of the same DICOM study (by StudyInstanceUID), or the image alone."""
    if not study.study_instance_uid:
        return [study]
    return list(session.scalars(
        select(Study).where(Study.study_instance_uid == study.study_instance_uid).order_by(Study.id)
        .options(selectinload(Study.prediction), selectinload(Study.flag))))


def study_result(session: Session, study: Study) -> dict:
    """The study-level call: from its frontal radiographs (highest probability), else out of scope."""
    images = study_images(session, study)
    frontal = [image for image in images if readable(image) and image.prediction is not None]
    result = {"study_instance_uid": study.study_instance_uid, "images": [image.id for image in images],
              "frontal_images": [image.id for image in frontal], "scope": "in_scope"}
    if not frontal:
        candidates = [image for image in images if readable(image)]
        if not candidates:
            scope = OUT_OF_SCOPE
        elif any(image.status in ("queued", "running") for image in candidates):
            scope = "pending"
        else:
            scope = "error"  # frontal images there, but none could be read
        result.update(scope=scope, probability=None, prediction=None)
        return result
    decisive = max(frontal, key=lambda image: image.prediction.probability)
    result.update(probability=decisive.prediction.probability, prediction=decisive.prediction.prediction,
                  threshold=decisive.prediction.threshold, decided_by=decisive.id)
    return result
