"""A large upload: duplicates found in a few queries, not one per study, written in short transactions and
queued chunk by chunk while the rest is still being taken in."""
from dataclasses import replace

from sqlalchemy import event, select

from core.services import services_of
from db.accounts import create_user, ensure_department
from db.models import Batch, Prediction, ReviewFlag, Study, StudyStatus
from studies import intake
from studies.files import Item


def _items(count: int, seed: int = 0) -> list[Item]:
    # Distinct content is all duplicate detection looks at; these items are never decoded here.
    return [Item(f"f{i}.png", f"film {seed}-{i}".encode()) for i in range(count)]


def test_duplicates_of_a_large_upload_cost_a_few_queries_and_stay_in_the_department(app, monkeypatch):
    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)  # no worker here: only the intake is measured
    monkeypatch.setattr(services, "settings", replace(services.settings, batch_size=150))  # chunks of 150
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
    assert len(batch_reads) <= 3 * 7, len(batch_reads)
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
    monkeypatch.setattr(services, "settings", replace(services.settings, batch_size=150))  # one chunk
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


def test_a_large_upload_is_queued_chunk_by_chunk_and_receiving_until_its_last_file(app, monkeypatch):
    """Screening starts while the rest of the upload is taken in; until then the batch says `receiving`."""
    from web.queries import batch_progress

    services = services_of(app)  # the test settings' batch size: 4
    seen = []

    def enqueue(ids):
        with services.sessions() as session:
            batch_id = session.scalar(select(Study.batch_id).where(Study.id == ids[0]))
            seen.append((len(ids), batch_progress(session, [batch_id])[batch_id]["status"]))

    monkeypatch.setattr(services, "enqueue", enqueue)
    with services.sessions.begin() as session:
        user = create_user(session, "u", "uploader", None).id
    batch, _ = intake.submit_batch(services, _items(10) + [Item("bad.png", b"", error="empty file")], user, "api")
    # Full chunks go while the upload is taken in; the last one is written with the batch's closing.
    assert seen == [(4, "receiving"), (4, "receiving"), (2, "queued")]
    with services.sessions() as session:
        progress = batch_progress(session, [batch.id])[batch.id]
        assert progress["status"] == "queued" and progress["total"] == 10 and progress["rejected"] == 1
        assert session.get(Batch, batch.id).received_at is not None


def test_new_films_without_a_study_uid_are_not_recomputed_at_intake(app, monkeypatch):
    """Each such film's result is made with it and stays `registered` while it is queued: the intake reads no
    result, prediction or flag back (three queries a chunk saved); a copy of a screened film is still reported."""
    from db.models import StudyResult

    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)
    monkeypatch.setattr(services, "settings", replace(services.settings, batch_size=150))
    with services.sessions.begin() as session:
        user = create_user(session, "u", "uploader", None).id
    first, _ = intake.submit_batch(services, _items(2), user, "api")
    with services.sessions.begin() as session:  # the first film screened
        study = session.scalars(select(Study).where(Study.batch_id == first.id).order_by(Study.id)).first()
        study.status = StudyStatus.DONE
        session.add(Prediction(study_id=study.id, model_name="m", model_version="1", probability=0.9,
                               prediction="PNEUMONIA", threshold=0.5, crop_box=[0, 0, 1, 1]))
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    fresh, _ = intake.submit_batch(services, _items(20, seed=1), user, "api")
    assert not [s for s in statements if s.lstrip().startswith("SELECT") and "FROM study_results" in s]
    copy, _ = intake.submit_batch(services, _items(1), user, "api")  # the screened film again
    with services.sessions() as session:
        made = session.scalars(select(StudyResult).join(Study, Study.study_result_id == StudyResult.id)
                               .where(Study.batch_id == fresh.id)).all()
        assert len(made) == 20 and {(r.status, r.scope, r.version) for r in made} == {("registered", "pending", 1)}
        copied = session.scalars(select(StudyResult).join(Study, Study.study_result_id == StudyResult.id)
                                 .where(Study.batch_id == copy.id)).one()
        assert (copied.call, copied.status) == ("PNEUMONIA", "final")


def test_a_small_upload_writes_its_batch_once_and_reads_it_never(app, monkeypatch):
    """One chunk, one transaction: the batch is inserted already received, and the duplicate lookup takes its
    department from it rather than reading it back."""
    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)
    with services.sessions.begin() as session:
        user = create_user(session, "u", "uploader", None, department_id=ensure_department(session, "A").id).id
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    batch, _ = intake.submit_batch(services, _items(3), user, "api")
    assert len([s for s in statements if s.lstrip().startswith("INSERT INTO batches")]) == 1
    assert not [s for s in statements if s.lstrip().startswith(("UPDATE batches", "SELECT batches"))]
    with services.sessions() as session:
        assert session.get(Batch, batch.id).received_at is not None


def test_new_films_are_inserted_with_their_result_and_never_updated_for_it(app, monkeypatch):
    """A film without a StudyInstanceUID gets a result of its own: the result is inserted first and the film with
    its id, in one flush (the intake updated every new film's row after inserting it, one statement a chunk)."""
    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)
    with services.sessions.begin() as session:
        user = create_user(session, "u", "uploader", None).id
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    batch, _ = intake.submit_batch(services, _items(4), user, "api")
    assert not [s for s in statements if s.lstrip().startswith("UPDATE studies")]
    with services.sessions() as session:
        studies = session.scalars(select(Study).where(Study.batch_id == batch.id)).all()
        assert len(studies) == 4 and len({study.study_result_id for study in studies} - {None}) == 4
        assert all(study.study_result.status == "registered" for study in studies)
