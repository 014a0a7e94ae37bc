"""A labelled zip for site calibration is deleted once its outcome is recorded, and a second delivery of the
same task does nothing."""
from sqlalchemy import func, select

from core.services import services_of
from db.accounts import create_user
from db.models import AuditEvent, SiteCalibration
from studies.calibrations import propose_from_zip
from tests.helpers import chest_films, zip_bytes
from worker import pipeline


def _sample(normal: int, pneumonia: int, seed: int) -> bytes:
    films = chest_films(normal, pneumonia, seed=seed)
    return zip_bytes({f"{'PNEUMONIA' if name.startswith('pneumonia') else 'NORMAL'}/{name}": data
                      for name, data in films.items()})


def test_the_sample_is_deleted_after_its_proposal_or_its_failure(app):
    services = services_of(app)
    with services.sessions.begin() as session:
        admin = create_user(session, "chief", "admin", None).id
    screener = pipeline.load_screener(services.settings)
    good, _ = services.storage.put_original(_sample(25, 25, seed=0))
    poor, _ = services.storage.put_original(_sample(3, 3, seed=1))

    record = propose_from_zip(services, screener, good, "good.zip", "North", 0.05, admin)
    assert record is not None and not services.storage.path(good).exists()
    assert propose_from_zip(services, screener, poor, "poor.zip", "North", 0.02, admin) is None
    assert not services.storage.path(poor).exists()
    # The task delivered again (a worker lost after recording), or the same zip sent twice at once: no second
    # proposal, and the admin reads why nothing came of it.
    assert propose_from_zip(services, screener, good, "good.zip", "North", 0.05, admin) is None
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SiteCalibration)) == 1
        reasons = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "calibration.failed")
                                  .order_by(AuditEvent.id)).all()
        assert len(reasons) == 2 and "already assessed and deleted" in reasons[1]["reason"]
