"""Prometheus /metrics from the database: queue depth, results per model version, flags, errors, latency."""
import io
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from core.services import services_of
from db.models import Study
from models.reasons import FlagReason
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer, chest_films, zip_bytes
from worker import pipeline


def _scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    # One charset parameter: Prometheus 3 refuses a duplicate.
    assert response.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def test_metrics_follow_the_database(app, users):
    client = app.test_client()
    upload = zip_bytes({"frontal.dcm": to_bytes(dataset(chest_pixels())),
                        "lateral.dcm": to_bytes(dataset(chest_pixels(), view="LL")),
                        "broken.dcm": to_bytes(dataset(chest_pixels()))[:-2000]})
    response = client.post("/api/v1/batches", data={"files": [(io.BytesIO(upload), "x.zip")]},
                           headers=bearer(users["uploader"]), content_type="multipart/form-data")
    assert response.status_code == 202
    before = _scrape(client)
    assert before[("pneumoscreen_queue_depth", ())] == 3
    assert before[("pneumoscreen_studies", (("status", "queued"),))] == 3

    services = services_of(app)
    with services.sessions() as session:
        ids = session.scalars(select(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, pipeline.load_screener(services.settings.weights_dir), ids)
    after = _scrape(client)
    assert after[("pneumoscreen_queue_depth", ())] == 0
    assert after[("pneumoscreen_results_total", (("model", "tiny-cnn"), ("model_version", "0.0.0+tiny")))] == 2
    assert after[("pneumoscreen_study_errors_total", ())] == 1
    assert after[("pneumoscreen_flags", (("reason", "out_of_scope"), ("state", "open")))] == 1
    assert after[("pneumoscreen_studies_per_second", ())] == 3 / 300
    assert after[("pneumoscreen_result_latency_seconds", (("quantile", "0.5"),))] > 0


class _TwoReasonScreener(StubScreener):
    """Every film NORMAL near the threshold and uncertain: two flag reasons on one flag."""

    def _finding(self, image):
        finding = super()._finding(image)
        return replace(finding, reasons=(FlagReason.NEAR_THRESHOLD, FlagReason.UNCERTAIN))


def test_a_flag_counts_once_under_each_of_its_reasons(app, users):
    client = app.test_client()
    upload = zip_bytes(chest_films(2))
    response = client.post("/api/v1/batches", data={"files": [(io.BytesIO(upload), "x.zip")]},
                           headers=bearer(users["uploader"]), content_type="multipart/form-data")
    assert response.status_code == 202
    services = services_of(app)
    with services.sessions() as session:
        ids = session.scalars(select(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, _TwoReasonScreener(), ids)
    flags = {labels: value for (name, labels), value in _scrape(client).items() if name == "pneumoscreen_flags"}
    assert flags == {(("reason", "near_threshold"), ("state", "open")): 2,
                     (("reason", "uncertain"), ("state", "open")): 2}
