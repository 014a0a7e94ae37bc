"""Prometheus /metrics, derived from the database at scrape time: right however many web and worker processes run."""
import logging
from collections import Counter
from datetime import timedelta

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from core.services import current_services
from db.models import FINISHED, UNFINISHED, Prediction, ReviewFlag, Study, StudyStatus, as_utc, utcnow
from studies.drift import Week, weekly
from studies.qa import MissRate, miss_rates
from web.qa import current_reference

logger = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

WINDOW = timedelta(minutes=5)
LATENCY_WINDOW = timedelta(hours=1)
QUANTILES = (0.5, 0.9, 0.99)


@bp.get("/metrics")
def metrics():
    """Counts only, no patient data; scrape it from the internal network."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(current_services().sessions))
    # content_type, not mimetype: Flask would add a second charset, which Prometheus 3 refuses to scrape.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class DatabaseCollector:
    """Reads the study, prediction and flag tables once per scrape."""

    def __init__(self, sessions):
        self.sessions = sessions

    def collect(self):
        now = utcnow()
        with self.sessions() as session:
            by_status = dict(session.execute(select(Study.status, func.count()).group_by(Study.status)).all())
            by_model = session.execute(select(Prediction.model_name, Prediction.model_version, func.count())
                                       .group_by(Prediction.model_name, Prediction.model_version)).all()
            flags = Counter((reason, status) for reasons, status in session.execute(
                select(ReviewFlag.reasons, ReviewFlag.status)) for reason in reasons)
            recent = session.scalar(select(func.count()).select_from(Study).where(
                Study.status.in_(FINISHED), Study.finished_at >= now - WINDOW))
            latencies = session.execute(select(Study.created_at, Study.finished_at).where(
                Study.status == StudyStatus.DONE, Study.finished_at >= now - LATENCY_WINDOW)).all()
            rates = miss_rates(session)
            reference = current_reference()
            weeks = weekly(session, reference) if reference is not None else []
        studies = GaugeMetricFamily("pneumoscreen_studies", "Studies by status", labels=["status"])
        for status in StudyStatus:
            studies.add_metric([status], by_status.get(status, 0))
        yield studies
        yield GaugeMetricFamily("pneumoscreen_queue_depth", "Studies waiting or being screened",
                                value=sum(by_status.get(status, 0) for status in UNFINISHED))
        yield CounterMetricFamily("pneumoscreen_study_errors", "Studies that ended in error",
                                  value=by_status.get(StudyStatus.ERROR, 0))
        results = CounterMetricFamily("pneumoscreen_results", "Studies screened, by model",
                                      labels=["model", "model_version"])
        for name, version, count in by_model:
            results.add_metric([name, version], count)
        yield results
        # A gauge: a flag moves from open to closed, so the open count goes down.
        flagged = GaugeMetricFamily("pneumoscreen_flags", "Review flags by reason and state (one per reason)",
                                    labels=["reason", "state"])
        for (reason, state), count in sorted(flags.items()):
            flagged.add_metric([reason, state], count)
        yield flagged
        yield GaugeMetricFamily("pneumoscreen_studies_per_second", "Studies finished per second, last 5 minutes",
                                value=recent / WINDOW.total_seconds())
        yield _latency(latencies)
        yield from _miss_rates(rates)
        yield from _drift(weeks)


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
        "reads": CounterMetricFamily("pneumoscreen_qa_reads", "QA samples read (pneumonia or normal)", labels=labels),
        "misses": CounterMetricFamily("pneumoscreen_qa_misses", "QA samples a reviewer called pneumonia",
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


def _latency(rows) -> GaugeMetricFamily:
    """Upload-to-result seconds over the last hour, as quantiles."""
    seconds = sorted((as_utc(done) - as_utc(created)).total_seconds() for created, done in rows)
    family = GaugeMetricFamily("pneumoscreen_result_latency_seconds",
                               "Seconds from upload to result, studies finished in the last hour",
                               labels=["quantile"])
    for q in QUANTILES:
        family.add_metric([str(q)], seconds[min(len(seconds) - 1, int(q * len(seconds)))] if seconds else 0.0)
    return family

