"""A small world for access tests: two departments, one user per role, a screened and flagged study."""
import itertools
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department, issue_token
from db.models import ApiToken, ReviewFlag, Study
from models.operating_point import Choice, OperatingPoint
from studies.calibrations import Assessment, save_calibration
from studies.files import Item
from studies.intake import submit_batch
from tests.helpers import StubScreener
from tests.security.corpus import encode, film
from worker import pipeline


@dataclass
class World:
    """Who is who (role -> token, None for anonymous) and the objects they act on."""

    tokens: dict
    ids: dict
    counter: itertools.count = field(default_factory=itertools.count)


@pytest.fixture
def world(app) -> World:
    services = services_of(app)
    tokens, ids = {"anonymous": None}, {}
    with services.sessions.begin() as session:
        radiology, other = ensure_department(session, "Radiology"), ensure_department(session, "Elsewhere")
        for key, role, department in (("uploader", "uploader", radiology), ("other", "uploader", other),
                                      ("reviewer", "reviewer", None), ("admin", "admin", None),
                                      ("spare", "uploader", None)):
            user = create_user(session, key, role, f"{key}-password", department_id=department.id if department else None)
            tokens[key] = issue_token(session, user, "matrix")
            ids[f"{key}_user"] = user.id
        radiology_id = radiology.id
    batch, _ = submit_batch(services, [Item("film.png", encode(film(), "PNG"))], ids["uploader_user"], "api")
    with services.sessions.begin() as session:
        study_id = session.scalar(select(Study.id).where(Study.batch_id == batch.id))
    # The stub calls the film NORMAL near the threshold, so it is flagged: the access tests act on its flag.
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), [study_id])
    with services.sessions.begin() as session:
        assert session.scalar(select(ReviewFlag.reasons).where(ReviewFlag.study_id == study_id)) == ["near_threshold"]
        ids["spare_token"] = session.scalar(select(ApiToken.id).where(ApiToken.user_id == ids["spare_user"]))
        ids["result"] = session.get(Study, study_id).study_result_id
        choice = Choice(OperatingPoint(0.5, 0.3), 0.05, 30, 30, 0.9, 0.8, 1, 0.03, 0.1, 0.12)
        ids["calibration"] = save_calibration(session, "Radiology", Assessment(choice, b"\x89PNG", "0" * 64, "t", []),
                                              None, "matrix", accept=False).id
    ids.update(batch=batch.id, study=study_id, department=radiology_id)
    return World(tokens, ids)
