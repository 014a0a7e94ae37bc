"""The batch CSV: a BOM for Excel, non-ASCII names intact, every column filled, times with their zone, formulas
defused, streamed a page at a time."""
import csv
import io
from datetime import datetime

from sqlalchemy import select

from core.services import services_of
from db.accounts import ensure_department
from db.models import Study, StudyResult, User
from studies.files import expand
from studies.intake import submit_batch
from studies.reviews import record_decision
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer
from web import exports
from worker import pipeline

NAME = "Łódź/żółć-Ülrich-名前.dcm"


def _screened_batch(app, films: dict[str, bytes]) -> int:
    services = services_of(app)
    with services.sessions.begin() as session:
        uploader = session.scalar(select(User.id).where(User.username == "uploader"))
        department = ensure_department(session, "Radiologie Süd").id
    items = [item for name, data in films.items() for item in expand(name, data)]
    batch, rejected = submit_batch(services, items, uploader, "api", department_id=department)
    assert not rejected
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id)).all()
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), ids)
    return batch.id


def _csv(app, users, batch_id: int) -> tuple[bytes, list[dict]]:
    response = app.test_client().get(f"/api/v1/batches/{batch_id}.csv", headers=bearer(users["uploader"]))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    body = response.get_data()
    return body, list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


def test_csv_has_a_bom_every_column_and_zoned_times(app, users):
    ds = dataset(chest_pixels(), study_uid="1.2.826.0.1.5", AccessionNumber="ACC-7", StudyDate="20261201",
                 PatientSex="F")
    batch_id = _screened_batch(app, {NAME: to_bytes(ds)})
    services = services_of(app)
    with services.sessions.begin() as session:
        study = session.scalar(select(Study).where(Study.batch_id == batch_id))
        if study.study_result is None:  # studies.results attaches one at intake; read whatever is there
            study.study_result = StudyResult(scope="in_scope", call="NORMAL", status="preliminary")
        reviewer = session.scalar(select(User.id).where(User.username == "reviewer"))
        record_decision(session, study, reviewer, "normal", "=HYPERLINK(\"http://x\") reviewed; lungs clear")
        result = study.study_result
        expected_result = (result.call or "", result.scope or "", result.status or "")

    body, [row] = _csv(app, users, batch_id)
    assert body.startswith(b"\xef\xbb\xbf")  # Excel reads the file as UTF-8 only with it
    assert list(row) == exports.COLUMNS
    assert row["filename"] == NAME and row["department"] == "Radiologie Süd" and row["batch_id"] == str(batch_id)
    assert row["study_instance_uid"] == "1.2.826.0.1.5" and row["series_instance_uid"] == ds.SeriesInstanceUID
    assert row["sop_instance_uid"] == ds.SOPInstanceUID and row["accession_number"] == "ACC-7"
    assert (row["study_date"], row["patient_age"], row["patient_sex"]) == ("2026-12-01", "004Y", "F")
    assert (row["modality"], row["view_position"], row["status"]) == ("CR", "PA", "done")
    assert (row["prediction"], row["probability"], row["threshold"]) == ("NORMAL", "0.4100", "0.5")
    assert row["model_version"] == "0.0.0+stub"
    assert (row["study_call"], row["study_scope"], row["study_status"]) == expected_result
    assert (row["flagged"], row["flag_reason"], row["review_status"]) == ("1", "near_threshold", "closed")
    assert (row["reviewer"], row["review_decision"]) == ("reviewer", "normal")
    assert row["review_note"] == "'=HYPERLINK(\"http://x\") reviewed; lungs clear"  # defused, still readable
    for column in ("decided_at", "uploaded_at", "finished_at"):
        assert datetime.fromisoformat(row[column]).utcoffset() is not None, column


def test_csv_streams_page_by_page(app, users, monkeypatch):
    monkeypatch.setattr(exports, "PAGE", 2)
    films = {f"film-{i}.dcm": to_bytes(dataset(chest_pixels())) for i in range(5)}
    batch_id = _screened_batch(app, films)
    _, rows = _csv(app, users, batch_id)
    assert sorted(row["filename"] for row in rows) == sorted(films)
    assert len({row["study_id"] for row in rows}) == 5 and [int(r["study_id"]) for r in rows] == sorted(
        int(r["study_id"]) for r in rows)
