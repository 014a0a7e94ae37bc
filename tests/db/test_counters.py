"""db.counters: an upsert that adds exactly under concurrent writers, on SQLite and PostgreSQL; bounded labels."""
import threading

import pytest
from sqlalchemy import select

from db import counters
from db.models import MetricCounter
from db.session import make_engine, make_session_factory


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_concurrent_increments_all_land(sessions):
    threads, per_thread = 4, 25
    failures = []

    def work():
        for _ in range(per_thread):
            try:
                with sessions.begin() as session:
                    counters.increment(session, "pneumoscreen_test_total", {"kind": "a"})
            except Exception as exc:  # a lost increment must fail the test, not vanish in a thread
                failures.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    with sessions() as session:
        assert session.scalars(select(MetricCounter.value)).all() == [threads * per_thread]
        assert counters.read_all(session) == [("pneumoscreen_test_total", {"kind": "a"}, threads * per_thread)]


def test_labels_are_sorted_and_bounded(sessions):
    with sessions.begin() as session:
        counters.increment(session, "pneumoscreen_test_total", {"b": "2", "a": "1"}, by=2.5)
        counters.increment(session, "pneumoscreen_test_total", {"a": "1", "b": "2"})
    with sessions() as session:
        assert session.scalars(select(MetricCounter.labels)).all() == ['a="1",b="2"']
        assert counters.read_all(session)[0][2] == 3.5
    bad = [("pneumoscreen_test", {}, 1), ("pneumoscreen_test_total", {}, -1),
           ("pneumoscreen_test_total", {"file": 'x".dcm'}, 1), ("pneumoscreen_test_total", {"uid": "1" * 65}, 1),
           ("pneumoscreen_test_total", {"Bad-Name": "x"}, 1)]
    with sessions.begin() as session:
        for name, labels, by in bad:
            with pytest.raises(ValueError):
                counters.increment(session, name, labels, by)
        with pytest.raises(ValueError):
            counters.count_instances(session, "ftp", "stored", 0)


def test_record_survives_a_database_that_is_down(caplog):
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    counters.record(make_session_factory(engine), counters.TASK_RETRIES, {"task": "t", "exception": "E"})
    assert "not raised" in caplog.text
    engine.dispose()
