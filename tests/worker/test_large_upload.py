"""A large upload: duplicates found in a few queries, not one per study, and written in short transactions."""
from sqlalchemy import event, select

from core.services import services_of
from db.accounts import create_user, ensure_department
from db.models import Prediction, ReviewFlag, Study, StudyStatus
from studies import intake
from studies.files import Item


def _items(count: int, seed: int = 0) -> list[Item]:
    # Distinct content is all duplicate detection looks at; these items are never decoded here.
    return [Item(f"f{i}.png", f"film {seed}-{i}".encode()) for i in range(count)]


def test_duplicates_of_a_large_upload_cost_a_few_queries_and_stay_in_the_department(app, monkeypatch):
    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)  # no worker here: only the intake is measured
    monkeypatch.setattr(intake, "INSERT_CHUNK", 150)
    with services.sessions.begin() as session:
        users = [create_user(session, f"u{name}", "uploader", None,
                             department_id=ensure_department(session, name).id).id for name in ("A", "B")]
    first, _ = intake.submit_batch(services, _items(300), users[0], "api")
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    # 300 films again (each an earlier study's copy), 300 new ones, and 10 twice within the upload.
    again = _items(300) + _items(300, seed=1) + _items(10, seed=1)
    second, _ = intake.submit_batch(services, again, users[0], "api")
    other, _ = intake.submit_batch(services, _items(300), users[1], "api")  # another department: no link
    lookups = [s for s in statements if "content_sha256 IN" in s]
    assert 0 < len(lookups) <= 10  # chunks of 150 studies, one lookup each
    # Batch departments are read once a chunk, never once a study: 910 films, 7 chunks.
    batch_reads = [s for s in statements if "FROM batches" in s]
    assert len(batch_reads) <= 2 * 7, len(batch_reads)
    with services.sessions() as session:
        linked = session.scalars(select(Study.duplicate_of_id).where(Study.batch_id == second.id)
                                 .order_by(Study.id)).all()
        originals = session.scalars(select(Study.id).where(Study.batch_id == first.id).order_by(Study.id)).all()
        new = session.scalars(select(Study.id).where(Study.batch_id == second.id).order_by(Study.id)).all()
        assert linked[:300] == originals  # copies of the first upload point at it
        assert linked[300:600] == [None] * 300 and linked[600:] == new[300:310]  # copies within the upload
        assert session.scalars(select(Study.duplicate_of_id).where(Study.batch_id == other.id)).all() == [None] * 300


def test_copies_of_screened_films_are_answered_in_a_few_queries(app, monkeypatch):
    """Re-sent films take their originals' results: predictions and flags are read for all copies at once."""
    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)
    with services.sessions.begin() as session:
        user = create_user(session, "u", "uploader", None).id
    first, _ = intake.submit_batch(services, _items(120), user, "api")
    with services.sessions.begin() as session:
        for study in session.scalars(select(Study).where(Study.batch_id == first.id)):
            study.status = StudyStatus.DONE
            session.add(Prediction(study_id=study.id, model_name="m", model_version="1", probability=0.9,
                                   prediction="PNEUMONIA", threshold=0.5, crop_box=[0, 0, 1, 1]))
            session.add(ReviewFlag(study_id=study.id, reasons=["near_threshold"]))
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    again, _ = intake.submit_batch(services, _items(120), user, "api")
    reads = [s for s in statements if s.lstrip().startswith("SELECT") and ("FROM predictions" in s
                                                                          or "FROM review_flags" in s)]
    assert len(reads) <= 4, len(reads)
    with services.sessions() as session:
        copies = session.scalars(select(Study).where(Study.batch_id == again.id)).all()
        assert all(copy.status == StudyStatus.DONE and copy.prediction.probability == 0.9 for copy in copies)
        assert all(copy.flag.reasons == ["near_threshold"] for copy in copies)
