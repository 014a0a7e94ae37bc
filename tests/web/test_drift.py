"""Drift monitoring per department and week: stable and shifted weeks, warnings on the dashboard and in /metrics."""
import shutil
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department
from db.models import Batch, Prediction, Study, utcnow
from models.drift import FEATURES, Reference
from studies.drift import weekly
from tests.helpers import login


def _values(rng, n: int, shift: float) -> dict[str, np.ndarray]:
    return {name: rng.normal(0.5 + shift, 0.1, n) for name in FEATURES}


@pytest.fixture
def drift_app(tmp_path, database_url, tiny_weights):
    """An app whose weights carry a drift reference fitted on made 'validation' values."""
    from core.settings import Settings
    from pneumoscreen.app import create_app

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    rng = np.random.default_rng(0)
    values = _values(rng, 2000, 0.0)
    Reference.fit("0.0.0+tiny", values, values["probability"] > 0.6, np.zeros(2000, bool)).save(
        weights / "reference.json")
    app = create_app(settings=Settings.from_env({
        "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": database_url,
        "PNEUMOSCREEN_WEIGHTS_DIR": str(weights), "SECRET_KEY": "test"}))
    yield app
    services_of(app).engine.dispose()


def _results(session, batch_id: int, when, values: dict[str, np.ndarray]) -> None:
    for i in range(len(values["probability"])):
        study = Study(batch_id=batch_id, filename=f"f{i}.png", content_sha256=f"{batch_id}-{i}", storage_key="k",
                      status="done")
        session.add(study)
        session.flush()
        probability = float(np.clip(values["probability"][i], 0, 1))
        session.add(Prediction(study_id=study.id, model_name="tiny", model_version="0.0.0+tiny",
                               probability=probability, prediction="PNEUMONIA" if probability > 0.6 else "NORMAL",
                               threshold=0.6, crop_box=[0, 0, 1, 1], created_at=when,
                               details={"stats": {name: float(values[name][i]) for name in FEATURES[1:]}}))


def test_a_shifted_week_warns_on_the_dashboard_and_in_metrics(drift_app):
    services = services_of(drift_app)
    rng = np.random.default_rng(1)
    now = utcnow()
    with services.sessions.begin() as session:
        department = ensure_department(session, "Ward D")
        user = create_user(session, "d", "uploader", None, department_id=department.id)
        create_user(session, "rev", "reviewer", "reviewer-password")
        batch = Batch(created_by=user.id, department_id=department.id, source="api")
        session.add(batch)
        session.flush()
        _results(session, batch.id, now - timedelta(weeks=2), _values(rng, 80, 0.0))   # as on validation
        _results(session, batch.id, now, _values(rng, 80, 0.1))                        # one sd higher
        _results(session, batch.id, now - timedelta(weeks=20), _values(rng, 80, 0.3))  # too old to show
    with services.sessions() as session:
        reference = Reference.load(services.settings.weights_dir / "reference.json")
        weeks = weekly(session, reference)
        latest_values = session.scalars(select(Prediction.probability).where(Prediction.created_at >= now)).all()
    assert [week.n for week in weeks] == [80, 80] and {week.department for week in weeks} == {"Ward D"}
    stable, shifted = weeks
    assert max(stable.psi.values()) < 0.25 and not stable.warnings
    assert set(shifted.psi) == set(FEATURES) and min(shifted.psi.values()) >= 0.25 and shifted.warnings
    assert shifted.psi["probability"] == pytest.approx(reference.psi("probability", np.array(latest_values)),
                                                       abs=1e-4)

    client = drift_app.test_client()
    login(client, "rev", "reviewer-password")
    page = client.get("/qa").get_data(as_text=True)
    assert f"Ward D, {shifted.week}: shifted from validation" in page and f"Ward D, {stable.week}" not in page
    assert client.get("/qa/drift/Ward D.png").data[:4] == b"\x89PNG"
    assert client.get("/qa/drift/Nowhere.png").status_code == 404
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'pneumoscreen_drift_warning{department="Ward D"} 1.0' in metrics
    assert 'pneumoscreen_drift_psi{department="Ward D",feature="probability"}' in metrics
