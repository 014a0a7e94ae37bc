"""Prometheus /metrics from the database: types Prometheus 3 accepts, counters that only rise, real histograms,
HTTP and stored counters; on SQLite and PostgreSQL."""
import io
import re
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from core.services import services_of
from db import counters
from db.models import OutboundMessage, Study, StudyResult, User
from models.reasons import FlagReason
from studies.reviews import record_decision
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer, chest_films, zip_bytes
from worker import pipeline

# RFC 7230 token characters, as Go's mime package checks them.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """As strict as Go's mime.ParseMediaType (what Prometheus 3 uses): type/subtype as tokens, then
    `; name=value` parameters (token or quoted string), names case-insensitive and never repeated."""
    media, _, rest = value.partition(";")
    media = media.strip().lower()
    kind, slash, subtype = media.partition("/")
    if not (_TOKEN.fullmatch(kind) and slash and _TOKEN.fullmatch(subtype)):
        raise ValueError(f"not a media type: {media!r}")
    params: dict[str, str] = {}
    rest = rest.strip()
    while rest:
        match = re.match(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s"]+)\s*(?:;|$)', rest)
        if match is None or not _TOKEN.fullmatch(match[1]):
            raise ValueError(f"bad parameter in {value!r}")
        name, raw = match[1].lower(), match[2]
        if name in params:
            raise ValueError(f"duplicate parameter name {name!r}")
        if not raw.startswith('"') and not _TOKEN.fullmatch(raw):
            raise ValueError(f"bad parameter value {raw!r}")
        params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        rest = rest[match.end():].strip()
    return media, params


def test_the_media_type_parser_is_strict():
    assert parse_media_type('text/plain; version=1.0.0; charset="utf-8"') == (
        "text/plain", {"version": "1.0.0", "charset": "utf-8"})
    for bad in ("text/plain; charset=utf-8; charset=utf-8", "text/plain; charset=utf-8; Charset=utf-8",
                "text; charset=utf-8", "text/plain; charset", "text/plain; a=b c"):
        with pytest.raises(ValueError):
            parse_media_type(bad)


def scrape(client) -> dict:
    """Families by name, after checking the header as Prometheus 3 reads it."""
    response = client.get("/metrics")
    assert response.status_code == 200
    media, params = parse_media_type(response.headers["Content-Type"])
    assert media == "text/plain" and params == {"version": "1.0.0", "charset": "utf-8"}
    return {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}


def samples(families: dict) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families.values() for sample in family.samples}


def _upload(client, token: str, members: dict) -> None:
    response = client.post("/api/v1/batches", data={"files": [(io.BytesIO(zip_bytes(members)), "x.zip")]},
                           headers=bearer(token), content_type="multipart/form-data")
    assert response.status_code == 202


def _screen(app, screener=None) -> list[int]:
    services = services_of(app)
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.status == "queued")).all()
    pipeline.run_batch(services.sessions, services.storage, screener or StubScreener(), ids)
    return ids


def test_metrics_follow_the_database(app, users):
    client = app.test_client()
    _upload(client, users["uploader"], {"frontal.dcm": to_bytes(dataset(chest_pixels())),
                                        "lateral.dcm": to_bytes(dataset(chest_pixels(), view="LL")),
                                        "lost.dcm": to_bytes(dataset(chest_pixels(rows=90)))})
    before = samples(scrape(client))
    assert before[("pneumoscreen_queue_depth", ())] == 3
    assert before[("pneumoscreen_studies", (("status", "queued"),))] == 3

    services = services_of(app)
    with services.sessions() as session:  # its stored file lost (a broken volume): the worker ends it in error
        lost = session.scalar(select(Study).where(Study.filename.like("%lost.dcm")))
        services.storage.path(lost.storage_key).unlink()
    _screen(app, pipeline.load_screener(services.settings))
    families = scrape(client)
    after = samples(families)
    assert after[("pneumoscreen_queue_depth", ())] == 0
    assert after[("pneumoscreen_results_total", (("model", "tiny-cnn"), ("model_version", "0.0.0+tiny")))] == 2
    assert after[("pneumoscreen_study_errors_total", (("reason", "file_missing"),))] == 1
    assert after[("pneumoscreen_flags", (("reason", "out_of_scope"), ("state", "open")))] == 1
    assert after[("pneumoscreen_flags_raised_total", (("reason", "out_of_scope"),))] == 1
    assert after[("pneumoscreen_studies_per_second", ())] == 3 / 300
    assert after[("pneumoscreen_result_latency_seconds_count", ())] == 2  # the two read; the lost one erred
    assert after[("pneumoscreen_screening_seconds_count", ())] == 3
    assert after[("pneumoscreen_result_latency_seconds_sum", ())] > 0


def test_types_names_and_histogram_buckets(app, users):
    client = app.test_client()
    _upload(client, users["uploader"], chest_films(3))
    _screen(app)
    families = scrape(client)
    expected = {"pneumoscreen_studies": "gauge", "pneumoscreen_queue_depth": "gauge", "pneumoscreen_flags": "gauge",
                "pneumoscreen_results": "counter", "pneumoscreen_study_errors": "counter",
                "pneumoscreen_flags_raised": "counter", "pneumoscreen_reviews": "counter",
                "pneumoscreen_result_latency_seconds": "histogram", "pneumoscreen_screening_seconds": "histogram",
                "pneumoscreen_outbound_messages": "gauge", "pneumoscreen_outbound_attempts": "counter",
                "pneumoscreen_http_requests": "counter", "pneumoscreen_drift_psi": "gauge"}
    assert {name: families[name].type for name in expected} == expected
    for family in families.values():
        for sample in family.samples:
            if family.type == "gauge":  # a gauge named like a counter misleads every rate() over it
                assert not sample.name.endswith("_total"), sample.name
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
    for name in ("pneumoscreen_result_latency_seconds", "pneumoscreen_screening_seconds"):
        buckets = [(float(s.labels["le"]), s.value) for s in families[name].samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1][0] == float("inf")
        counts = [value for _, value in buckets]
        assert counts == sorted(counts)  # cumulative
        assert buckets[-1][1] == samples(families)[(name + "_count", ())] == 3


class _TwoReasonScreener(StubScreener):
    """Every film NORMAL near the threshold and uncertain: two flag reasons on one flag."""

    def _finding(self, image):
        finding = super()._finding(image)
        return replace(finding, reasons=(FlagReason.NEAR_THRESHOLD, FlagReason.UNCERTAIN))


def test_a_flag_counts_once_under_each_of_its_reasons(app, users):
    client = app.test_client()
    _upload(client, users["uploader"], chest_films(2))
    _screen(app, _TwoReasonScreener())
    flags = {labels: value for (name, labels), value in samples(scrape(client)).items() if name == "pneumoscreen_flags"}
    assert flags == {(("reason", "near_threshold"), ("state", "open")): 2,
                     (("reason", "uncertain"), ("state", "open")): 2}


def _rising(families: dict) -> dict:
    """Every counter and histogram sample (the values that must never fall), the HTTP counter set aside."""
    return {key: value for name, family in families.items() if family.type in ("counter", "histogram")
            and name != "pneumoscreen_http_requests" for key, value in samples({name: family}).items()}


def test_counters_only_rise_as_a_flag_closes_and_a_study_finishes(app, users):
    client = app.test_client()
    services = services_of(app)
    _upload(client, users["uploader"], chest_films(2))
    _screen(app)  # both films NORMAL near the threshold: two open flags
    first = scrape(client)
    assert samples(first)[("pneumoscreen_flags", (("reason", "near_threshold"), ("state", "open")))] == 2

    with services.sessions.begin() as session:
        reviewer = session.scalar(select(User.id).where(User.username == "reviewer"))
        study = session.scalars(select(Study).order_by(Study.id)).first()
        record_decision(session, study, reviewer, "normal", "")
    second = scrape(client)
    assert samples(second)[("pneumoscreen_flags", (("reason", "near_threshold"), ("state", "open")))] == 1
    assert samples(second)[("pneumoscreen_reviews_total", (("decision", "normal"),))] == 1

    _upload(client, users["uploader"], chest_films(1, 1, seed=50))
    _screen(app)
    third = scrape(client)
    for earlier, later in ((first, second), (second, third)):
        old, new = _rising(earlier), _rising(later)
        assert set(old) <= set(new)
        assert all(new[key] >= value for key, value in old.items()), \
            {key: (value, new[key]) for key, value in old.items() if new[key] < value}
    assert _rising(third)[("pneumoscreen_result_latency_seconds_count", ())] == 4


def test_http_requests_are_counted_by_endpoint_and_status_class(app, users):
    client = app.test_client()
    before = samples(scrape(client))
    for _ in range(3):
        client.get("/healthz")
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/api/v1/batches/7", headers=bearer(users["uploader"])).status_code == 404
    after = samples(scrape(client))

    def delta(endpoint: str, status: str) -> float:
        key = ("pneumoscreen_http_requests_total", (("endpoint", endpoint), ("method", "GET"), ("status", status)))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("healthz", "2xx") == 3 and delta("unmatched", "4xx") == 1 and delta("api.get_batch", "4xx") == 1
    assert delta("metrics.metrics", "2xx") == 1  # the first scrape, counted after it answered


def test_stored_counters_appear_and_add_to_counts_read_from_rows(app, users):
    """What a purge or reset moves into db.counters keeps the counter from falling."""
    client = app.test_client()
    _upload(client, users["uploader"], chest_films(2))
    _screen(app)
    sessions = services_of(app).sessions
    with sessions.begin() as session:
        counters.increment(session, "pneumoscreen_results_total", {"model": "stub", "model_version": "0.0.0+stub"}, 5)
        counters.count_instances(session, "stow-rs", "stored", 0, by=2)
        counters.count_instances(session, "stow-rs", "refused", 0xA900)
    counters.record(sessions, counters.TASK_FAILURES, {"task": "screen_studies", "exception": "ValueError"})
    families = scrape(client)
    values = samples(families)
    assert values[("pneumoscreen_results_total", (("model", "stub"), ("model_version", "0.0.0+stub")))] == 2 + 5
    stow = (("outcome", "stored"), ("status", "0x0000"), ("via", "stow-rs"))
    assert values[("pneumoscreen_dicom_instances_total", stow)] == 2
    refused = (("outcome", "refused"), ("status", "0xA900"), ("via", "stow-rs"))
    assert values[("pneumoscreen_dicom_instances_total", refused)] == 1
    failures = (("exception", "ValueError"), ("task", "screen_studies"))
    assert values[("pneumoscreen_task_failures_total", failures)] == 1
    assert families["pneumoscreen_dicom_instances"].type == "counter"
    assert families["pneumoscreen_dicom_instances"].documentation == counters.HELP[counters.DICOM_INSTANCES]


def test_outbound_messages_by_kind_and_state(app, users):
    client = app.test_client()
    with services_of(app).sessions.begin() as session:
        result = StudyResult()
        session.add(result)
        session.flush()
        session.add_all([OutboundMessage(study_result_id=result.id, kind="fhir", result_version=1, destination="x",
                                         state="sent", attempts=2),
                         OutboundMessage(study_result_id=result.id, kind="fhir", result_version=2, destination="x",
                                         state="pending", attempts=1),
                         OutboundMessage(study_result_id=result.id, kind="hl7", result_version=1, destination="y",
                                         state="failed", attempts=5)])
    values = samples(scrape(client))
    assert values[("pneumoscreen_outbound_messages", (("kind", "fhir"), ("state", "sent")))] == 1
    assert values[("pneumoscreen_outbound_messages", (("kind", "hl7"), ("state", "failed")))] == 1
    assert values[("pneumoscreen_outbound_attempts_total", (("kind", "fhir"),))] == 3
    assert values[("pneumoscreen_outbound_attempts_total", (("kind", "hl7"),))] == 5
