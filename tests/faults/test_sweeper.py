"""The sweeper on its own: what counts as lost, and that it sends each lost study once."""
from datetime import timedelta

from sqlalchemy import select, update

from core.services import services_of
from db.models import Study, User, utcnow
from studies.files import Item
from studies.intake import submit_batch
from tests.security.corpus import encode, film
from worker.sweeper import requeue_stale


def _messages(services) -> int:
    return len(list(services.settings.broker_dir.glob("*.msg")))


def _age(services, ids, seconds: int, **values) -> None:
    with services.sessions.begin() as session:
        session.execute(update(Study).where(Study.id.in_(ids))
                        .values(created_at=utcnow() - timedelta(seconds=seconds), **values))


def test_requeue_stale(app, users):
    services = services_of(app)
    with services.sessions() as session:
        user_id = session.scalar(select(User.id).where(User.username == "uploader"))
    batch, _ = submit_batch(services, [Item(f"{i}.png", encode(film(seed=30 + i), "PNG")) for i in range(6)],
                            user_id, "api")
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id).order_by(Study.id)).all()
    assert _messages(services) == 2  # batch size 4
    assert requeue_stale(services, 60, 60) == 0  # fresh: nothing is lost

    _age(services, ids[:2], 3600, status="running", started_at=utcnow() - timedelta(seconds=3600))
    _age(services, ids[2:], 3600)
    # Messages still wait in the queue: only the studies of a dead worker are sent again.
    assert requeue_stale(services, 60, 60) == 2
    assert requeue_stale(services, 60, 60) == 0  # and only once
    with services.sessions() as session:
        assert session.scalars(select(Study.status).where(Study.id.in_(ids[:2]))).all() == ["queued", "queued"]

    for message in services.settings.broker_dir.glob("*.msg"):
        message.unlink()  # the broker lost everything
    assert requeue_stale(services, 60, 60) == 4  # queued long ago, nothing waiting: lost
    assert _messages(services) == 1
