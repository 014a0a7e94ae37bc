"""A department's active operating point sets its calls and flags; studies record which point they used."""
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department
from db.models import Batch, Study
from models.operating_point import Choice, OperatingPoint
from studies.calibrations import Assessment, save_calibration
from studies.files import expand
from studies.intake import submit_batch
from tests.helpers import chest_films
from worker import pipeline


def _assessment(threshold: float, band_low: float) -> Assessment:
    choice = Choice(OperatingPoint(threshold, band_low), 0.02, 50, 50, 1.0, 0.5, 0, 0.0, 0.06, 0.1)
    return Assessment(choice, b"", "a" * 64, "tiny", [])


def test_each_department_screens_with_its_own_point(app):
    services = services_of(app)
    films = chest_films(3)
    with services.sessions.begin() as session:
        users = {}
        for name in ("Ward A", "Ward B", "Ward C"):
            department = ensure_department(session, name)
            users[name] = create_user(session, name.lower().replace(" ", ""), "uploader", None,
                                      department_id=department.id).id
        # A calls everything pneumonia; B calls everything normal and flags it all as near the threshold.
        ward_a = save_calibration(session, "Ward A", _assessment(0.0, 0.0), None, "test", accept=True).id
        ward_b = save_calibration(session, "Ward B", _assessment(1.0, 0.0), None, "test", accept=True).id
        # A proposal nobody accepted is never used.
        save_calibration(session, "Ward C", _assessment(0.0, 0.0), None, "test", accept=False)
    for name in users:  # the same films in every department: never answered across departments
        batch, rejected = submit_batch(services, [item for n, d in films.items() for item in expand(n, d)],
                                       users[name], "api")
        assert batch is not None and rejected == []
    with services.sessions() as session:
        ids = session.scalars(select(Study.id)).all()
    screener = pipeline.load_screener(services.settings)
    assert pipeline.run_batch(services.sessions, services.storage, screener, ids)["done"] == 9

    with services.sessions() as session:
        rows = session.execute(select(Study, Batch.department_id).join(Batch)).all()
        by_ward = {}
        for study, _ in rows:
            by_ward.setdefault(study.batch.created_by, []).append(study)
        ward = {name: by_ward[user_id] for name, user_id in users.items()}
        assert all(study.duplicate_of_id is None for studies in ward.values() for study in studies)
        for study in ward["Ward A"]:
            assert study.prediction.prediction == "PNEUMONIA" and study.prediction.threshold == 0.0
            assert study.prediction.site_calibration_id == ward_a and study.flag is None
        for study in ward["Ward B"]:
            assert study.prediction.prediction == "NORMAL" and study.prediction.site_calibration_id == ward_b
            assert "near_threshold" in study.flag.reasons
        for study in ward["Ward C"]:  # no point of its own: the shipped one
            assert study.prediction.site_calibration_id is None
            assert study.prediction.threshold == screener.threshold
        # The same film, three calls: probabilities equal, calls as each department's point says.
        assert len({round(study.prediction.probability, 6) for study in
                    (ward["Ward A"][0], ward["Ward B"][0], ward["Ward C"][0])}) == 1
