"""A DICOM study's result: its images grouped by StudyInstanceUID, called from its frontal radiographs."""
import logging

from sqlalchemy.orm import Session, selectinload

from db.models import UNFINISHED, Study, StudyStatus
from models.reasons import FlagReason
from studies.scope import readable, same_study

logger = logging.getLogger(__name__)


def study_images(session: Session, study: Study) -> list[Study]:
    """The images of the same DICOM study in the same department (studies.scope.same_study), or the image alone."""
    if not study.study_instance_uid:
        return [study]
    return list(session.scalars(same_study(session, study).order_by(Study.id)
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
            scope = FlagReason.OUT_OF_SCOPE.value
        elif any(image.status in UNFINISHED for image in candidates):
            scope = "pending"
        else:
            scope = StudyStatus.ERROR.value  # frontal images there, but none could be read
        result.update(scope=scope, probability=None, prediction=None)
        return result
    decisive = max(frontal, key=lambda image: image.prediction.probability)
    result.update(probability=decisive.prediction.probability, prediction=decisive.prediction.prediction,
                  threshold=decisive.prediction.threshold, decided_by=decisive.id)
    return result
