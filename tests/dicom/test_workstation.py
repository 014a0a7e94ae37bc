"""The review page as a workstation: viewer, decision keys, heatmap overlay only when the model made one."""

from sqlalchemy import select

from core.services import services_of
from db.models import Study
from models.imaging import to_png
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.dicom.test_stow import _post
from tests.helpers import bearer, login
from worker import pipeline


def test_review_page_heatmap_toggle_and_keys(app, users):
    client = app.test_client()
    lateral_only = dataset(chest_pixels(), view="LL")  # out_of_scope: always flagged
    assert _post(client, users["uploader"], [("application/dicom", to_bytes(lateral_only))]).status_code == 200
    services = services_of(app)
    with services.sessions() as session:
        study_id = session.scalars(select(Study.id)).one()
    pipeline.run_batch(services.sessions, services.storage, pipeline.load_screener(services.settings),
                       [study_id])
    login(client, "reviewer", "reviewer-password")
    page = client.get(f"/review/{study_id}").get_data(as_text=True)
    assert 'id="workstation"' in page and "viewer.js" in page and 'data-shortcut="pneumonia"' in page
    assert "<b>out of scope</b>" in page and "data-heatmap=" in page  # the pipeline stores a Grad-CAM overlay
    # A model that made no attention map: no heatmap to offer.
    services.storage.derived_path(study_id, "attention").unlink()
    page = client.get(f"/review/{study_id}").get_data(as_text=True)
    assert "data-heatmap=" not in page and 'id="heat-mode"' not in page
    assert client.get(f"/studies/{study_id}/heatmap.png").status_code == 404

    services.storage.put_derived(study_id, "heatmap", to_png(chest_pixels() / 4095.0))
    page = client.get(f"/review/{study_id}").get_data(as_text=True)
    assert 'id="heat-mode"' in page and f"/studies/{study_id}/heatmap.png" in page
    image = client.get(f"/studies/{study_id}/heatmap.png")
    assert image.status_code == 200 and image.data[:4] == b"\x89PNG"
    batch_page = client.get(f"/batches/{session_batch(app, study_id)}").get_data(as_text=True)
    assert ".csv" in batch_page and "Download results" in batch_page
    assert client.get("/api/v1/batches/1.csv", headers=bearer(users["uploader"])).status_code == 200


def session_batch(app, study_id: int) -> int:
    with services_of(app).sessions() as session:
        return session.get(Study, study_id).batch_id
