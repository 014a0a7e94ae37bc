"""The sweeper on its own: what counts as lost, and that it sends each lost study once."""
from datetime import timedelta

from sqlalchemy import func, select, update

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


def test_a_batch_whose_upload_died_mid_intake_is_closed(app, users):
    """The web process died after some chunks were stored: the batch said `receiving` and would for ever."""
    from db.models import AuditEvent, Batch
    from web.queries import batch_progress

    services = services_of(app)
    with services.sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.username == "uploader"))
        recent, old = (Batch(created_by=user_id, created_at=utcnow() - timedelta(minutes=minutes))
                       for minutes in (5, 90))
        session.add_all([recent, old])
    requeue_stale(services, 60, 60)
    with services.sessions() as session:
        assert session.get(Batch, recent.id).received_at is None  # may still be arriving
        assert session.get(Batch, old.id).received_at is not None
        progress = batch_progress(session, [recent.id, old.id])
        assert (progress[recent.id]["status"], progress[old.id]["status"]) == ("receiving", "done")
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "batch.interrupted")).all()
        assert [(event.object_id, event.detail["reason"]) for event in events] == [
            (old.id, "the upload stopped before its last file was stored")]
    requeue_stale(services, 60, 60)  # closed once, audited once
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "batch.interrupted")) == 1
