"""DICOM through intake and the pipeline: header attributes, study grouping, scope, CSV and FHIR out."""
import csv
import io
import logging

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from sqlalchemy import select

from core.services import services_of
from db.models import Study
from tests.dicom.factory import SECRET_ID, SECRET_NAME, chest_pixels, dataset, j2k, jpeg_lossless, to_bytes
from tests.helpers import bearer, zip_bytes
from worker import pipeline


@pytest.fixture
def screened(app, users, caplog):
    """A zip of DICOM films (frontal + lateral study, lateral-only study, a CT) uploaded and screened."""
    caplog.set_level(logging.DEBUG)
    pixels = chest_pixels()
    films = {
        "a/frontal.dcm": dataset(pixels.copy(), view="PA", study_uid="1.2.3.100"),
        "a/lateral.dcm": jpeg_lossless(dataset(pixels.copy(), view="LL", study_uid="1.2.3.100")),
        "b/lateral.dcm": j2k(dataset(pixels.copy(), view="RL", study_uid="1.2.3.200")),
        "c/ct.dcm": dataset(pixels.copy(), modality="CT", view=None, study_uid="1.2.3.300"),
    }
    upload = zip_bytes({name: to_bytes(ds) for name, ds in films.items()})
    client = app.test_client()
    response = client.post("/api/v1/batches", data={"files": [(io.BytesIO(upload), "films.zip")]},
                           headers=bearer(users["uploader"]), content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    services = services_of(app)
    with services.sessions() as session:
        ids = {s.filename.split("/", 1)[1]: s.id for s in session.scalars(select(Study)).all()}
    screener = pipeline.load_screener(services.settings)
    # The CT is not applicable (studies/applicability.py): done at intake, never screened.
    assert pipeline.run_batch(services.sessions, services.storage, screener, list(ids.values()))["done"] == 3
    return client, services, ids, response.get_json()["id"]


def test_header_attributes_scope_and_study_result(screened, caplog):
    _, services, ids, _ = screened
    with services.sessions() as session:
        studies = {name: session.get(Study, study_id) for name, study_id in ids.items()}
        frontal = studies["a/frontal.dcm"]
        assert (frontal.modality, frontal.view_position, frontal.study_instance_uid) == ("CR", "PA", "1.2.3.100")
        assert frontal.patient_age == "004Y" and frontal.body_part == "CHEST" and frontal.sop_instance_uid
        ct = studies.pop("c/ct.dcm")
        assert all(study.prediction is not None for study in studies.values())  # results stored, even out of scope
        assert ct.status == "done" and ct.prediction is None and ct.flag is None
        assert "modality is not a projection radiograph" in ct.not_applicable
        assert studies["b/lateral.dcm"].flag.reasons == ["out_of_scope"]
        assert studies["a/lateral.dcm"].flag is None  # its study has a frontal film
        assert frontal.flag is None or "out_of_scope" not in frontal.flag.reasons
        grouped = studies["a/lateral.dcm"].study_result
        assert grouped.decided_by_image_id == frontal.id and grouped is frontal.study_result
        assert [image.id for image in grouped.images] == sorted([frontal.id, studies["a/lateral.dcm"].id])
        assert grouped.probability == pytest.approx(frontal.prediction.probability)
        assert studies["b/lateral.dcm"].study_result.scope == "out_of_scope"
        assert ct.study_result.scope == "not_applicable"
    assert SECRET_NAME.split("^")[0] not in caplog.text and SECRET_ID not in caplog.text


def test_batch_csv_export(screened, users):
    client, services, ids, batch_id = screened
    response = client.get(f"/api/v1/batches/{batch_id}.csv", headers=bearer(users["uploader"]))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    by_id = {int(row["study_id"]): row for row in rows}
    assert set(by_id) == set(ids.values())
    ct = by_id[ids["c/ct.dcm"]]
    assert ct["modality"] == "CT" and ct["flag_reason"] == "" and ct["flagged"] == "0" and ct["probability"] == ""
    with services.sessions() as session:
        frontal = session.get(Study, ids["a/frontal.dcm"])
        row = by_id[frontal.id]
        assert float(row["probability"]) == pytest.approx(frontal.prediction.probability, abs=1e-4)
        assert row["prediction"] == frontal.prediction.prediction and row["study_instance_uid"] == "1.2.3.100"
    assert client.get(f"/api/v1/batches/{batch_id}.csv").status_code == 401
    assert client.get("/api/v1/batches/999.csv", headers=bearer(users["uploader"])).status_code == 404


def test_fhir_diagnostic_report_validates_and_follows_review(screened, users):
    client, services, ids, _ = screened
    frontal_id, lateral_id = ids["a/frontal.dcm"], ids["a/lateral.dcm"]
    url = f"/api/v1/studies/{frontal_id}/fhir"
    response = client.get(url, headers=bearer(users["reviewer"]))
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    body = response.get_json()
    report = DiagnosticReport.model_validate(body)
    observations = {obs["id"]: Observation.model_validate(obs) for obs in body["contained"]}
    with services.sessions() as session:
        frontal = session.get(Study, frontal_id)
        probability, flagged = frontal.prediction.probability, frontal.flag is not None
    assert float(observations["probability"].valueQuantity.value) == pytest.approx(probability, abs=1e-4)
    assert observations["call"].valueCodeableConcept.text in ("PNEUMONIA", "NORMAL")
    assert f"from image {frontal_id}" in report.conclusion
    assert body["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.3.100"
    # Both images of the study answer with the study's one report.
    lateral = client.get(f"/api/v1/studies/{lateral_id}/fhir", headers=bearer(users["uploader"])).get_json()
    assert lateral == body
    if flagged:
        assert report.status == "preliminary" and observations["review"].status == "registered"
        decided = client.post(f"/api/v1/studies/{frontal_id}/review", json={"decision": "unreadable",
                                                                           "note": "rotated"},
                              headers=bearer(users["reviewer"]))
        assert decided.status_code == 201
        body = client.get(url, headers=bearer(users["reviewer"])).get_json()
        review = Observation.model_validate(next(obs for obs in body["contained"] if obs["id"] == "review"))
        assert review.status == "final" and review.valueCodeableConcept.text == "unreadable"
        assert review.note[0].text == "rotated"
    assert DiagnosticReport.model_validate(body).status == "final"

    ct = client.get(f"/api/v1/studies/{ids['c/ct.dcm']}/fhir", headers=bearer(users["reviewer"])).get_json()
    assert "233604007" not in str(ct) and "probability" not in str(ct.get("contained", ""))
    assert client.get("/api/v1/studies/999/fhir", headers=bearer(users["reviewer"])).status_code == 404
