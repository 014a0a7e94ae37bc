"""Scope: which images the model may be trusted on, by their DICOM header (children's frontal radiographs).

One `studies` row is one image. DICOM images group into a radiology study by StudyInstanceUID.
Scope is decided when a result is recorded (`scope_reasons`): every image gets the model's result
stored, and an image the model must not be trusted on is flagged `out_of_scope` for a person:
a non-radiograph modality, an adult patient, or a non-frontal view in a study with no frontal image.
A lateral next to a frontal film is not flagged: the study's result comes from its frontal images, which
`studies.results.study_result` computes when it is read (the highest frontal probability decides).
"""
import logging

from sqlalchemy import Select, and_, select
from sqlalchemy.orm import Session

from db.models import Batch, Study
from models.reasons import FlagReason

logger = logging.getLogger(__name__)

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


def in_scope(modality: str | None, patient_age: str | None, view_position: str | None) -> bool:
    """An image the model's result can stand for on its own: a child's radiograph in a frontal view."""
    return header_in_scope(modality, patient_age) and is_frontal(view_position)


def readable(study: Study) -> bool:
    """The study row's image is in scope by its header."""
    return in_scope(study.modality, study.patient_age, study.view_position)


def header_causes(modality: str | None, patient_age: str | None, view_position: str | None) -> list[str]:
    """Why the DICOM header puts an image out of scope, in words; [] when it does not."""
    causes = []
    if not in_modality_scope(modality):
        causes.append(f"modality {modality} is not a radiograph")
    if not in_age_scope(patient_age):
        causes.append(f"patient age {age_years(patient_age):.0f} years (adult)")
    if not is_frontal(view_position):
        causes.append(f"view {view_position} is not frontal")
    return causes


def scope_reasons(session: Session, study: Study, model_reasons: list[FlagReason]) -> list[FlagReason]:
    """The flag reasons to record for this image: out_of_scope by its header, the model's own, or []."""
    if not header_in_scope(study.modality, study.patient_age):
        return [FlagReason.OUT_OF_SCOPE]
    if is_frontal(study.view_position):
        return list(model_reasons)
    if _has_frontal_sibling(session, study):
        return []  # the study's frontal images speak for it
    return [FlagReason.OUT_OF_SCOPE]


def same_study(session: Session, study: Study) -> Select:
    """The images of the study's DICOM study: same StudyInstanceUID and the same department (or, without one,
    the same uploader). UIDs are not secrets: another department's upload must never join a study."""
    owner = session.execute(select(Batch.department_id, Batch.created_by).where(Batch.id == study.batch_id)).one()
    same_owner = (Batch.department_id == owner.department_id if owner.department_id is not None
                  else and_(Batch.department_id.is_(None), Batch.created_by == owner.created_by))
    return (select(Study).join(Batch, Study.batch_id == Batch.id)
            .where(Study.study_instance_uid == study.study_instance_uid, same_owner))


def _has_frontal_sibling(session: Session, study: Study) -> bool:
    if not study.study_instance_uid:
        return False
    siblings = session.scalars(same_study(session, study).where(Study.id != study.id)).all()
    return any(in_modality_scope(sibling.modality) and is_frontal(sibling.view_position) for sibling in siblings)
