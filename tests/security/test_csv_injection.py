"""Every text cell of every CSV export is defused, DICOM-derived ones included (one escaping function)."""
import csv
import io

from sqlalchemy import select

from core.services import services_of
from db.models import Study, User
from studies.files import expand
from studies.intake import submit_batch
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer
from worker import pipeline


def test_formulas_in_dicom_headers_and_names_are_defused_in_the_batch_csv(app, users):
    services = services_of(app)
    ds = dataset(chest_pixels(), view="@SUM(A1)")
    ds.Modality = "=CMD"
    with services.sessions() as session:
        uploader = session.scalar(select(User.id).where(User.username == "uploader"))
    batch, _ = submit_batch(services, list(expand("=HYPERLINK(evil).dcm", to_bytes(ds))), uploader, "api")
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id)).all()
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), ids)
    response = app.test_client().get(f"/api/v1/batches/{batch.id}.csv", headers=bearer(users["uploader"]))
    [row] = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert row["filename"] == "'=HYPERLINK(evil).dcm"
    assert row["modality"] == "'=CMD" and row["view_position"] == "'@SUM(A1)"
    assert not any(value.startswith(("=", "+", "-", "@")) for value in row.values())
