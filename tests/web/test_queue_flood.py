"""The review queue cannot be flooded: copies of a film are queued once per department, a decision on it
closes the copies' flags, the queue comes a page at a time, and one batch holds a bounded number of films."""
import pytest
from sqlalchemy import select

from core.services import services_of
from db.models import Study, User
from studies import intake
from studies.files import Item, expand
from studies.reviews import record_decision
from tests.helpers import StubScreener, bearer, chest_films
from worker import pipeline


def _screen(services, user_id: int, films: dict[str, bytes]) -> list[int]:
    batch, _ = intake.submit_batch(services, [i for n, d in films.items() for i in expand(n, d)], user_id, "api")
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id).order_by(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), ids)
    return ids


@pytest.fixture
def uploader_id(app, users):
    with services_of(app).sessions() as session:
        return session.scalar(select(User.id).where(User.username == "uploader"))


def test_copies_are_queued_once_and_closed_by_one_decision(app, users, uploader_id):
    services = services_of(app)
    films = chest_films(3)
    first = _screen(services, uploader_id, films)
    for _ in range(3):  # the same three films uploaded again and again
        _screen(services, uploader_id, films)
    client = app.test_client()
    queue = client.get("/api/v1/review", headers=bearer(users["reviewer"])).get_json()
    assert queue["total"] == 3 and sorted(item["study_id"] for item in queue["items"]) == first
    with services.sessions.begin() as session:
        reviewer_id = session.scalar(select(User.id).where(User.username == "reviewer"))
        record_decision(session, session.get(Study, first[0]), reviewer_id, "normal", "")
    with services.sessions() as session:
        copies = session.scalars(select(Study).where(Study.duplicate_of_id == first[0])).all()
        assert len(copies) == 3 and all(copy.flag.status == "closed" for copy in copies)
        assert all(copy.flag.latest.decision == "normal" for copy in copies)
    assert client.get("/api/v1/review", headers=bearer(users["reviewer"])).get_json()["total"] == 2


def test_the_queue_comes_a_page_at_a_time(app, users, uploader_id):
    _screen(services_of(app), uploader_id, chest_films(60))
    client = app.test_client()
    first = client.get("/api/v1/review?per_page=50", headers=bearer(users["reviewer"])).get_json()
    second = client.get("/api/v1/review?per_page=50&page=2", headers=bearer(users["reviewer"])).get_json()
    assert (first["total"], first["pages"], len(first["items"]), len(second["items"])) == (60, 2, 50, 10)
    assert not {i["study_id"] for i in first["items"]} & {i["study_id"] for i in second["items"]}
    huge = client.get("/api/v1/review?per_page=100000", headers=bearer(users["reviewer"])).get_json()
    assert len(huge["items"]) == 60 and huge["pages"] == 1


def test_one_batch_holds_a_bounded_number_of_films(app, uploader_id, monkeypatch):
    services = services_of(app)
    monkeypatch.setattr(intake, "MAX_STUDIES", 5)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)
    batch, rejected = intake.submit_batch(services, [Item(f"f{i}.png", f"x{i}".encode()) for i in range(8)],
                                          uploader_id, "api")
    assert len(rejected) == 3 and "over 5 films in one batch" in rejected[0]["error"]
    with services.sessions() as session:
        assert len(session.scalars(select(Study).where(Study.batch_id == batch.id)).all()) == 5
