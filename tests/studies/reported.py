"""A study result from a real DICOM film: real intake, a stub screener with a heatmap, the real record path.

The result row is the one intake made (studies.results.attach), or a new one where intake makes none; its
call, scope, status and version are then set here, so a test knows them whatever studies.results computes
(the shared films are adult chest films, which the real rules call out of scope).
"""
import numpy as np
from sqlalchemy import select

from core.services import Services
from db.accounts import create_user
from db.models import Study, StudyResult
from studies.intake import submit_uploads
from tests.helpers import StubScreener, data_dir
from worker import pipeline


class HeatStub(StubScreener):
    """StubScreener whose findings carry a Grad-CAM-like heatmap (a warm blob in the right-hand lung)."""

    def _finding(self, image):
        finding = super()._finding(image)
        y, x = np.mgrid[0:32, 0:32] / 32
        finding.heatmap = np.exp(-(((x - 0.7) / 0.15) ** 2 + ((y - 0.6) / 0.2) ** 2)).astype(np.float32)
        return finding


def reported_result(services: Services, film: str = "RG1_J2KI.dcm", scope: str = "in_scope",
                    status: str = "preliminary", version: int = 1, data: bytes | None = None) -> int:
    """Hand a real film from ../shared/data/dicom over (or `data`, named `film`), screen it, and record its study
    result; returns its id."""
    data = (data_dir("dicom") / film).read_bytes() if data is None else data
    with services.sessions.begin() as session:
        uploader = create_user(session, f"uploader-{film}", "uploader", None)
        uploader_id = uploader.id
    batch, rejected, accepted = submit_uploads(services, [(film, data)], uploader_id, "api")
    assert accepted == 1 and not rejected, rejected
    with services.sessions() as session:
        ids = list(session.scalars(select(Study.id).where(Study.batch_id == batch.id)))
    assert pipeline.run_batch(services.sessions, services.storage, HeatStub(), ids)["done"] == 1
    with services.sessions.begin() as session:
        image = session.get(Study, ids[0])
        prediction, in_scope = image.prediction, scope == "in_scope"
        result = image.study_result or StudyResult(
            department_id=image.batch.department_id, study_instance_uid=image.study_instance_uid,
            accession_number=image.accession_number, study_date=image.study_date)
        result.scope, result.status, result.version = scope, status, version
        result.call = prediction.prediction if in_scope else None
        result.probability = prediction.probability if in_scope else None
        result.threshold = prediction.threshold if in_scope else None
        result.decided_by_image_id = image.id if in_scope else None
        result.model_version, result.open_flags = prediction.model_version, int(image.flag is not None)
        session.add(result)
        session.flush()
        image.study_result_id = result.id
        return result.id
