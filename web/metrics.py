"""Prometheus /metrics, derived from the database at scrape time: right however many web and worker processes run.

Counters only rise. Those read from rows count rows that are never deleted (a retention purge deletes stored
files, not rows) in states that never change back (a study finishes once; a flag is raised once), and each adds
what db.counters holds under the same name and labels: whatever one day deletes or resets counted rows must first
add their count there. Histograms read finished studies, whose times never change again.
"""
import itertools
import json
import logging
import threading
import time
from collections import Counter
from datetime import timedelta

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as ProcessCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import Float, String, case, cast, extract, func, select
from sqlalchemy.orm import Session

from core.services import current_services
from db import counters
from db.models import FINISHED, UNFINISHED, OutboundMessage, Prediction, Review, ReviewFlag, Study, StudyStatus, utcnow
from studies.drift import Week, weekly
from studies.qa import MissRate, miss_rates
from web.qa import current_reference

logger = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

WINDOW = timedelta(minutes=5)
# Drift and QA read weeks of results: computed at most once a minute per process, drift over the last two
# ISO weeks only (the gauges show each department's latest week).
SLOW_TTL_S, DRIFT_WEEKS = 60.0, 2
LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
SCREENING_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
HTTP_REQUESTS, SLOW_PART = "pneumoscreen_http_requests", "pneumoscreen_metrics_slow"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def init_app(app: Flask) -> None:
    """The web process's own request counter (it starts at zero when the process does: Prometheus sees a
    counter reset), counted after every request, and the cache of the slow part of a scrape."""
    app.extensions[HTTP_REQUESTS] = ProcessCounter(
        HTTP_REQUESTS, "HTTP requests answered by this web process (since it started)",
        ["method", "endpoint", "status"], registry=None)
    app.extensions[SLOW_PART] = _Cached(SLOW_TTL_S)
    app.after_request(count_request)


def count_request(response):
    """Method, endpoint (blueprint.view; "unmatched" for no route) and status class: a bounded label set."""
    method = request.method if request.method in HTTP_METHODS else "other"
    current_app.extensions[HTTP_REQUESTS].labels(
        method, request.endpoint or "unmatched", f"{response.status_code // 100}xx").inc()
    return response


@bp.get("/metrics")
def metrics():
    """Counts only, no patient data; scrape it from the internal network."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(current_services().sessions, current_app.extensions[SLOW_PART]))
    registry.register(current_app.extensions[HTTP_REQUESTS])
    # content_type, not mimetype: Flask would add a second charset, which Prometheus 3 refuses to scrape.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _Cached:
    """A value computed at most once per `ttl` seconds (per process)."""

    def __init__(self, ttl: float):
        self.ttl, self.lock, self.value, self.expires = ttl, threading.Lock(), None, 0.0

    def get(self, compute):
        with self.lock:
            if time.monotonic() >= self.expires:
                self.value, self.expires = compute(), time.monotonic() + self.ttl
            return self.value


class DatabaseCollector:
    """Reads the tables once per scrape: group-by counts and two aggregate queries, whatever the row count."""

    def __init__(self, sessions, slow: _Cached):
        self.sessions, self.slow = sessions, slow

    def collect(self):
        with self.sessions() as session:
            by_status = dict(session.execute(select(Study.status, func.count()).group_by(Study.status)).all())
            recent = session.scalar(select(func.count()).select_from(Study).where(
                Study.status.in_(FINISHED), Study.finished_at >= utcnow() - WINDOW))
            families = [*_studies(by_status, recent), *_results(session), *_errors(session), *_flags(session),
                        *_histograms(session), *_outbound(session), *_stored_counters(session)]
        rates, weeks = self.slow.get(lambda: self._slow_part())
        families += [*_miss_rates(rates), *_drift(weeks)]
        yield from _merged(families)

    def _slow_part(self) -> tuple[list[MissRate], list[Week]]:
        with self.sessions() as session:
            reference = current_reference()
            weeks = weekly(session, reference, weeks=DRIFT_WEEKS) if reference is not None else []
            return miss_rates(session), weeks


def _studies(by_status: dict, recent: int):
    studies = GaugeMetricFamily("pneumoscreen_studies", "Studies (images) by status", labels=["status"])
    for status in StudyStatus:
        studies.add_metric([status], by_status.get(status, 0))
    yield studies
    yield GaugeMetricFamily("pneumoscreen_queue_depth", "Studies waiting or being screened",
                            value=sum(by_status.get(status, 0) for status in UNFINISHED))
    yield GaugeMetricFamily("pneumoscreen_studies_per_second", "Studies finished per second, last 5 minutes",
                            value=recent / WINDOW.total_seconds())


def _results(session: Session):
    results = CounterMetricFamily("pneumoscreen_results", "Studies screened, by model",
                                  labels=["model", "model_version"])
    for name, version, count in session.execute(
            select(Prediction.model_name, Prediction.model_version, func.count())
            .group_by(Prediction.model_name, Prediction.model_version)):
        results.add_metric([name, version], count)
    yield results
    reviews = CounterMetricFamily("pneumoscreen_reviews", "Reviewer decisions recorded", labels=["decision"])
    for decision, count in session.execute(select(Review.decision, func.count()).group_by(Review.decision)):
        reviews.add_metric([decision], count)
    yield reviews


def _errors(session: Session):
    """Studies that ended in error, by a reason class (the reason text itself is free text)."""
    reason = case((Study.error.like("gave up after%"), "gave_up"),
                  (Study.error == "stored file is missing", "file_missing"),
                  (Study.error.like("the original was purged%"), "purged"), else_="unreadable")
    errors = CounterMetricFamily("pneumoscreen_study_errors", "Studies that ended in error, by reason class "
                                 "(gave_up: the worker crashed on it 3 times)", labels=["reason"])
    for name, count in session.execute(select(reason, func.count()).where(Study.status == StudyStatus.ERROR)
                                       .group_by(reason)):
        errors.add_metric([name], count)
    yield errors


def _flags(session: Session):
    """Flags by reason and state; a flag with two reasons counts under each. Grouped on the reason list's text:
    few distinct lists, however many flags."""
    rows = session.execute(select(cast(ReviewFlag.reasons, String), ReviewFlag.status, func.count())
                           .group_by(cast(ReviewFlag.reasons, String), ReviewFlag.status)).all()
    by_state, raised = Counter(), Counter()
    for reasons, state, count in rows:
        for reason in json.loads(reasons):
            by_state[reason, state] += count
            raised[reason] += count
    # A gauge: a flag moves from open to closed, so the open count goes down.
    flagged = GaugeMetricFamily("pneumoscreen_flags", "Review flags by reason and state (one per reason)",
                                labels=["reason", "state"])
    for (reason, state), count in sorted(by_state.items()):
        flagged.add_metric([reason, state], count)
    yield flagged
    total = CounterMetricFamily("pneumoscreen_flags_raised", "Review flags raised, by reason (one per reason)",
                                labels=["reason"])
    for reason, count in sorted(raised.items()):
        total.add_metric([reason], count)
    yield total


def _histograms(session: Session):
    done = (Study.status == StudyStatus.DONE, Study.not_applicable.is_(None))
    screened = (Study.status.in_(FINISHED), Study.started_at.is_not(None), Study.duplicate_of_id.is_(None))
    yield _histogram(session, "pneumoscreen_result_latency_seconds",
                     "Seconds from upload to result, screened studies (duplicates included)",
                     _seconds(session, Study.created_at, Study.finished_at), done, LATENCY_BUCKETS)
    yield _histogram(session, "pneumoscreen_screening_seconds",
                     "Seconds from a worker's claim to the study's end (its batch's screening time)",
                     _seconds(session, Study.started_at, Study.finished_at), screened, SCREENING_BUCKETS)


def _seconds(session: Session, start, end):
    if session.get_bind().dialect.name == "postgresql":
        return cast(extract("epoch", end - start), Float)  # a double: numeric arithmetic is several times slower
    return (func.julianday(end) - func.julianday(start)) * 86400.0  # SQLite keeps times as text


def _histogram(session: Session, name: str, documentation: str, seconds, where, buckets) -> HistogramMetricFamily:
    """One query: rows grouped by the first bound they are at or under (PostgreSQL stops at the first true WHEN),
    with their sum; the cumulative bucket counts add up in order."""
    rows = select(seconds.label("seconds")).select_from(Study).where(*where).cte("finished").prefix_with(
        "MATERIALIZED")  # each row's seconds computed once, not once per WHEN
    slot = case(*((rows.c.seconds <= bound, index) for index, bound in enumerate(buckets)), else_=len(buckets))
    counts, total = [0] * (len(buckets) + 1), 0.0
    for index, count, seconds_sum in session.execute(
            select(slot, func.count(), func.sum(rows.c.seconds)).group_by(slot)):
        counts[index], total = count, total + float(seconds_sum or 0)
    cumulative = list(itertools.accumulate(counts))
    pairs = [(str(float(bound)), value) for bound, value in zip(buckets, cumulative)]
    return HistogramMetricFamily(name, documentation, buckets=[*pairs, ("+Inf", cumulative[-1])], sum_value=total)


def _outbound(session: Session):
    """Results on their way to a PACS, RIS or FHIR server: messages by state (a gauge: pending becomes sent) and
    the attempts made (attempts only rise; messages are never deleted)."""
    rows = session.execute(select(OutboundMessage.kind, OutboundMessage.state, func.count(),
                                  func.sum(OutboundMessage.attempts))
                           .group_by(OutboundMessage.kind, OutboundMessage.state)).all()
    messages = GaugeMetricFamily("pneumoscreen_outbound_messages", "Outbound messages by kind and state",
                                 labels=["kind", "state"])
    attempts = CounterMetricFamily("pneumoscreen_outbound_attempts", "Attempts to send outbound messages",
                                   labels=["kind"])
    by_kind = Counter()
    for kind, state, count, tries in rows:
        messages.add_metric([kind, state], count)
        by_kind[kind] += tries or 0
    for kind, tries in sorted(by_kind.items()):
        attempts.add_metric([kind], tries)
    yield messages
    yield attempts


def _stored_counters(session: Session):
    """Counters raised by any process through db.counters, one family per name."""
    families: dict[str, CounterMetricFamily] = {}
    for name, labels, value in counters.read_all(session):
        family = families.get(name)
        if family is None:
            family = families[name] = CounterMetricFamily(name, counters.HELP.get(name, name), labels=sorted(labels))
        family.add_metric([labels[key] for key in sorted(labels)], value)
    yield from families.values()


def _merged(families: list):
    """One family per name: a db.counters counter with the name of a row-derived one adds to it."""
    merged: dict[str, object] = {}
    for family in families:
        known = merged.get(family.name)
        if known is None:
            merged[family.name] = family
            continue
        if known.type != family.type:
            logger.warning("metric %s: a stored counter cannot add to a %s; left out", family.name, known.type)
            continue
        values = {(sample.name, tuple(sorted(sample.labels.items()))): sample for sample in known.samples}
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            old = values.get(key)
            values[key] = sample._replace(value=sample.value + (old.value if old else 0))
        known.samples = list(values.values())
    return merged.values()


def _drift(weeks: list[Week]):
    """Each department's latest week: PSI per feature and whether it warns (studies/drift.py)."""
    latest = {week.department: week for week in weeks}  # weeks come oldest first
    psi = GaugeMetricFamily("pneumoscreen_drift_psi", "PSI against the validation films, latest week",
                            labels=["department", "feature"])
    warning = GaugeMetricFamily("pneumoscreen_drift_warning", "1 when the latest week shifted past the limits",
                                labels=["department"])
    for department, week in sorted(latest.items()):
        for feature, value in week.psi.items():
            psi.add_metric([department, feature], value)
        warning.add_metric([department], int(bool(week.warnings)))
    yield psi
    yield warning


def _miss_rates(rates: list[MissRate]):
    """The QA miss-rate estimate per department and model version (studies/qa.py), with its bound and target."""
    labels = ["department", "model_version"]
    families = {
        # Gauges: a reviewer may change a decision, so a sample can stop counting as a miss.
        "reads": GaugeMetricFamily("pneumoscreen_qa_reads", "QA samples read (pneumonia or normal)", labels=labels),
        "misses": GaugeMetricFamily("pneumoscreen_qa_misses", "QA samples a reviewer called pneumonia",
                                      labels=labels),
        "upper": GaugeMetricFamily("pneumoscreen_qa_miss_rate_upper",
                                   "One-sided 95% upper bound on the miss rate among unflagged NORMAL calls",
                                   labels=labels),
        "target": GaugeMetricFamily("pneumoscreen_qa_miss_rate_target", "The department's miss-rate target",
                                    labels=labels),
        "warning": GaugeMetricFamily("pneumoscreen_qa_miss_rate_warning", "1 when the upper bound passes the target",
                                     labels=labels),
    }
    for rate in rates:
        key = [rate.department, rate.model_version]
        families["reads"].add_metric(key, rate.read)
        families["misses"].add_metric(key, rate.pneumonia)
        families["upper"].add_metric(key, rate.upper_one_sided)
        families["target"].add_metric(key, rate.target)
        families["warning"].add_metric(key, int(rate.warning))
    yield from families.values()
