"""Retention: `pneumoscreen purge --originals-older-than N` deletes old originals only, never content still in use
(storage is content-addressed), marks the studies, audits once; the sweeper applies PNEUMOSCREEN_RETENTION_DAYS."""
import dataclasses
import os
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from core.services import services_of
from db.models import AuditEvent, DicomPending, Study, User, utcnow
from pneumoscreen.cli import main
from studies.files import Item
from studies.intake import submit_batch
from studies.retention import purge_originals
from tests.helpers import chest_film
from worker.sweeper import start_sweeper

DAYS = 30


def _submit(services, user_id: int, films: dict[str, bytes]) -> dict[str, int]:
    batch, _ = submit_batch(services, [Item(name, data) for name, data in films.items()], user_id, "api")
    with services.sessions() as session:
        return {study.filename: study.id for study in session.scalars(select(Study).where(Study.batch_id == batch.id))}


def _finish(services, ids: list[int], days_ago: float | None, status: str = "done") -> None:
    with services.sessions.begin() as session:
        session.execute(update(Study).where(Study.id.in_(ids)).values(
            status=status, finished_at=None if days_ago is None else utcnow() - timedelta(days=days_ago)))


def _key(services, study_id: int) -> str:
    with services.sessions() as session:
        return session.get(Study, study_id).storage_key


def _age_file(services, study_id: int, days: float) -> None:
    moment = time.time() - days * 86_400
    os.utime(services.storage.path(_key(services, study_id)), (moment, moment))


@pytest.fixture
def shelf(app, users):
    """Studies in every situation a purge must tell apart; returns (services, name -> study id)."""
    services = services_of(app)
    with services.sessions() as session:
        user_id = session.scalar(select(User.id).where(User.username == "uploader"))
    films = {name: chest_film(seed) for seed, name in enumerate(
        ["old", "old-error", "shared-recent", "shared-queued", "recent", "resent", "pending"])}
    ids = _submit(services, user_id, films)
    # The same content again, later: these studies share the earlier ones' files.
    ids |= {f"{name}-copy": study_id for name, study_id in _submit(
        services, user_id, {name: films[name] for name in ("shared-recent", "shared-queued")}).items()}
    _finish(services, [ids[name] for name in ("old", "shared-recent", "shared-queued", "resent", "pending")], 40)
    _finish(services, [ids["old-error"]], 40, status="error")
    _finish(services, [ids["recent"], ids["shared-recent-copy"]], 2)
    _finish(services, [ids["shared-queued-copy"]], None, status="queued")
    for name in ("old", "old-error", "shared-recent", "shared-queued", "recent", "pending"):
        _age_file(services, ids[name], 40)  # "resent" keeps a fresh time: handed over again today
    with services.sessions.begin() as session:  # a listener instance waiting for its study refers to this file
        session.add(DicomPending(calling_ae="MODALITY", address="127.0.0.1", study_uid="1.2.3",
                                 filename="dicom/1.dcm", storage_key=_key(services, ids["pending"])))
    for study_id in ids.values():
        services.storage.put_derived(study_id, "view", b"\x89PNG view")
    return services, ids


def _files(services) -> set[str]:
    return {path.relative_to(services.storage.root).as_posix() for path in services.storage.root.rglob("*")
            if path.is_file()}


def _purge_events(services) -> list[AuditEvent]:
    with services.sessions() as session:
        return session.scalars(select(AuditEvent).where(AuditEvent.action == "originals.purge")).all()


def test_purge_deletes_only_old_originals_nobody_needs(shelf):
    services, ids = shelf
    before = _files(services)
    dry = purge_originals(services.sessions, services.storage, DAYS, dry_run=True)
    assert _files(services) == before and _purge_events(services) == []  # a dry run changes nothing
    with services.sessions() as session:
        assert session.scalars(select(Study.id).where(Study.original_purged_at.is_not(None))).all() == []

    report = purge_originals(services.sessions, services.storage, DAYS, by="test")
    assert dataclasses.asdict(report) == dataclasses.asdict(dry)
    assert (report.files, report.studies, report.kept_in_use, report.kept_recent, report.derived) == (2, 2, 3, 1, 0)
    assert report.bytes == sum(len(chest_film(seed)) for seed in (0, 1))
    deleted = {_key(services, ids["old"]), _key(services, ids["old-error"])}
    assert _files(services) == before - deleted  # pictures stay without --derived
    with services.sessions() as session:
        purged = session.scalars(select(Study.id).where(Study.original_purged_at.is_not(None))).all()
    assert sorted(purged) == sorted([ids["old"], ids["old-error"]])
    for name in ("shared-recent", "shared-queued", "recent", "resent", "pending"):
        assert services.storage.path(_key(services, ids[name])).exists(), name

    [event] = _purge_events(services)
    assert event.detail["files"] == 2 and event.detail["kept_in_use"] == 3 and event.detail["by"] == "test"
    again = purge_originals(services.sessions, services.storage, DAYS)
    assert (again.files, again.studies) == (0, 0) and len(_purge_events(services)) == 2


def test_shared_file_goes_once_its_last_study_is_old(shelf):
    services, ids = shelf
    _finish(services, [ids["shared-recent-copy"]], 45)
    report = purge_originals(services.sessions, services.storage, DAYS)
    assert not services.storage.path(_key(services, ids["shared-recent"])).exists()
    with services.sessions() as session:
        marked = session.scalars(select(Study.id).where(Study.original_purged_at.is_not(None))).all()
    assert {ids["shared-recent"], ids["shared-recent-copy"]} <= set(marked) and report.files == 3


def test_cli_purge_with_derived_and_dry_run(shelf, settings):
    services, ids = shelf
    env = {"PNEUMOSCREEN_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.database_url,
           "PNEUMOSCREEN_STORAGE_DIR": str(settings.storage_dir)}
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--originals-older-than", str(DAYS), "--derived", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "would delete 2 original files" in dry.output and "and 6 pictures" in dry.output
    assert services.storage.has_derived(ids["old"], "view") and _purge_events(services) == []
    done = runner.invoke(main, ["purge", "--originals-older-than", str(DAYS), "--derived"], env=env)
    assert done.exit_code == 0 and "deleted 2 original files" in done.output, done.output
    old = ("old", "old-error", "shared-recent", "shared-queued", "resent", "pending")
    assert not any(services.storage.has_derived(ids[name], "view") for name in old)
    assert services.storage.has_derived(ids["recent"], "view")
    assert _purge_events(services)[0].detail["derived"] == 6
    refused = runner.invoke(main, ["purge", "--originals-older-than", "0"], env=env)
    assert refused.exit_code != 0 and "0" in refused.output


def test_sweeper_applies_the_retention_setting(shelf):
    services, ids = shelf
    sweeping = dataclasses.replace(services, settings=services.settings.with_overrides({"retention_days": DAYS}))
    stop = start_sweeper(sweeping)
    try:
        deadline = time.monotonic() + 20
        while not _purge_events(services) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
    [event] = _purge_events(services)
    assert event.detail["by"] == "sweeper" and event.detail["files"] == 2
    assert not services.storage.path(_key(services, ids["old"])).exists()


def test_pictures_nobody_opened_yet_are_made_before_the_original_goes(app, users):
    """The worker keeps only the model's attention map; a purge makes the pictures people open from the film
    while it is still there, so the study page still shows the film, its crop and heatmap afterwards."""
    from studies.pictures import picture
    from worker import pipeline

    services = services_of(app)
    with services.sessions() as session:
        user_id = session.scalar(select(User.id).where(User.username == "uploader"))
    study_id = _submit(services, user_id, {"old.jpeg": chest_film(71)})["old.jpeg"]
    pipeline.run_batch(services.sessions, services.storage, pipeline.load_screener(services.settings),
                       [study_id])
    assert not services.storage.has_derived(study_id, "view") and services.storage.has_derived(study_id, "attention")
    _finish(services, [study_id], 40)
    _age_file(services, study_id, 40)
    assert purge_originals(services.sessions, services.storage, DAYS).files == 1
    assert not services.storage.path(_key(services, study_id)).exists()
    with services.sessions() as session:
        study = session.get(Study, study_id)
        for kind in ("thumb", "view", "crop", "heatmap"):
            assert picture(services.storage, study, kind).stat().st_size > 100
