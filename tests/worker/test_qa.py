"""Quality-check sampling: unflagged NORMAL calls reach the queue at the configured rate, and the miss-rate
estimate from their reviews matches a hand computation, on the dashboard and in /metrics."""
import math
from dataclasses import replace

import pytest
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department
from db.models import AuditEvent, Study
from studies.files import expand
from studies.intake import submit_batch
from studies.qa import miss_rates, set_share
from studies.reviews import record_decision
from tests.helpers import StubScreener, chest_films, login
from worker import pipeline


class _CalmScreener(StubScreener):
    """Every film NORMAL with no flag of the model's own: all are candidates for a QA draw."""

    def _finding(self, image):
        return replace(super()._finding(image), reasons=())


def _screen(services, user_id: int, films: dict[str, bytes], qa_share: float) -> list[int]:
    batch, _ = submit_batch(services, [item for name, data in films.items() for item in expand(name, data)],
                            user_id, "api")
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id)).all()
    pipeline.run_batch(services.sessions, services.storage, _CalmScreener(), ids, qa_share=qa_share)
    return ids


def _qa_flags(session, ids: list[int]) -> int:
    return sum(1 for study in session.scalars(select(Study).where(Study.id.in_(ids)))
               if study.flag is not None and study.flag.reasons == ["qa_sample"])


def test_samples_reach_the_queue_at_the_configured_rate(app):
    services = services_of(app)
    with services.sessions.begin() as session:
        users = {}
        for name, share in (("Default", None), ("None", 0.0), ("All", 1.0)):
            department = ensure_department(session, name)
            set_share(session, department, share)
            users[name] = create_user(session, name.lower(), "uploader", None, department_id=department.id).id
    drawn = {name: _screen(services, users[name], chest_films(n, seed=seed), qa_share=0.3)
             for name, n, seed in (("Default", 160, 0), ("None", 20, 500), ("All", 20, 700))}
    with services.sessions() as session:
        sampled = {name: _qa_flags(session, ids) for name, ids in drawn.items()}
        assert sampled["None"] == 0 and sampled["All"] == 20
        # 160 draws at 0.3: 48 expected, sd 5.8; 4.5 sd either side.
        assert 22 <= sampled["Default"] <= 74
        flagged = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "study.flag")).all()
        assert sum(detail["reasons"] == ["qa_sample"] for detail in flagged) == sum(sampled.values())


def _cp_hand(k: int, n: int) -> tuple[float, float, float]:
    """Clopper–Pearson by brute force over a fine grid: two-sided 95% and one-sided 95% upper."""
    def cdf(j, p):
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(j + 1)) if j >= 0 else 0.0
    grid = [i / 20000 for i in range(20001)]
    lower = max((p for p in grid if 1 - cdf(k - 1, p) <= 0.025), default=0.0)
    upper = min(p for p in grid if cdf(k, p) <= 0.025)
    one_sided = min(p for p in grid if cdf(k, p) <= 0.05)
    return lower, upper, one_sided


def test_the_miss_rate_estimate_matches_a_hand_computation(app):
    services = services_of(app)
    with services.sessions.begin() as session:
        department = ensure_department(session, "Ward Q")
        uploader = create_user(session, "q-uploader", "uploader", None, department_id=department.id).id
        reviewer = create_user(session, "q-reviewer", "reviewer", "q-reviewer-password").id
    ids = _screen(services, uploader, chest_films(40, seed=900), qa_share=1.0)
    decisions = ["pneumonia"] * 3 + ["unreadable"] * 2 + ["normal"] * 33 + [None] * 2
    with services.sessions.begin() as session:
        for study_id, decision in zip(ids, decisions):
            if decision:
                record_decision(session, session.get(Study, study_id), reviewer, decision, "")
    with services.sessions() as session:
        [rate] = miss_rates(session)
    lower, upper, one_sided = _cp_hand(3, 36)
    assert (rate.department, rate.sampled, rate.read, rate.pneumonia) == ("Ward Q", 40, 36, 3)
    assert rate.estimate == pytest.approx(3 / 36)
    assert rate.lower == pytest.approx(lower, abs=1e-4) and rate.upper == pytest.approx(upper, abs=1e-4)
    assert rate.upper_one_sided == pytest.approx(one_sided, abs=1e-4)
    assert rate.target == 0.02 and rate.warning and rate.reads_needed == 149  # 0.98 ** 149 < 0.05 < 0.98 ** 148

    client = app.test_client()
    login(client, "q-reviewer", "q-reviewer-password")
    page = client.get("/qa").get_data(as_text=True)
    assert "Ward Q" in page and "above its target of 2.0%" in page and "8.3%" in page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'pneumoscreen_qa_misses{department="Ward Q",model_version="0.0.0+stub"} 3.0' in metrics
    assert 'pneumoscreen_qa_miss_rate_warning{department="Ward Q",model_version="0.0.0+stub"} 1.0' in metrics
