"""The pipeline without a broker: run_batch on made films, bad files, reruns, flags; both databases."""
import numpy as np
import pytest
from sqlalchemy import func, select

from core.services import services_of
from db.models import AuditEvent, Batch, Prediction, ReviewFlag, Study, User
from models.reasons import FlagReason
from models.screener import Screener
from studies.pictures import picture
from tests.helpers import chest_film, chest_films, png_bytes
from worker import pipeline


@pytest.fixture
def services(app):
    return services_of(app)


def _add_studies(services, blobs: dict[str, bytes]) -> list[int]:
    """Store files and create queued studies directly (no broker involved)."""
    with services.sessions.begin() as session:
        user = User(username="u", password_hash="!", role="uploader")
        session.add(user)
        session.flush()
        batch = Batch(created_by=user.id)
        session.add(batch)
        session.flush()
        studies = []
        for name, data in blobs.items():
            key, digest = services.storage.put_original(data)
            studies.append(Study(batch_id=batch.id, filename=name, storage_key=key, content_sha256=digest))
        session.add_all(studies)
        session.flush()
        return [study.id for study in studies]


def test_run_batch_stores_results_errors_and_pictures(services):
    films = chest_films(normal=2, pneumonia=1)
    wide = png_bytes((np.random.default_rng(0).random((300, 700)) * 65535).astype(np.uint16))
    ids = _add_studies(services, {**films, "wide16.png": wide, "broken.jpeg": films[next(iter(films))][:300]})
    screener = pipeline.load_screener(services.settings)

    counts = pipeline.run_batch(services.sessions, services.storage, screener, ids)

    assert counts == {"done": 4, "error": 1, "skipped": 0}
    with services.sessions() as session:
        studies = {s.filename: s for s in session.scalars(select(Study)).all()}
        assert studies["broken.jpeg"].status == "error"
        assert "truncated" in studies["broken.jpeg"].error
        for name in [*films, "wide16.png"]:
            study = studies[name]
            assert study.status == "done" and study.error is None and study.finished_at
            assert study.prediction.model_version == screener.version
            assert 0.0 <= study.prediction.probability <= 1.0
            assert study.prediction.prediction in ("PNEUMONIA", "NORMAL")
            # The worker keeps the model's map; the pictures people open are made when first asked for.
            assert services.storage.has_derived(study.id, "attention")
            assert not services.storage.has_derived(study.id, "thumb")
            for kind in ("thumb", "view", "crop", "heatmap"):
                assert picture(services.storage, study, kind).stat().st_size > 100
        # Whatever the untrained model flags is stored with valid reasons and audited, one event a flag.
        flags = session.scalars(select(ReviewFlag)).all()
        assert all(flag.reasons and set(flag.reasons) <= set(FlagReason) for flag in flags)
        flag_events = session.scalars(select(AuditEvent.object_id).where(AuditEvent.action == "study.flag")).all()
        assert sorted(flag_events) == sorted(flag.study_id for flag in flags)
        actions = session.scalars(select(AuditEvent.action)).all()
        assert actions.count("study.result") == 4 and actions.count("study.error") == 1


def test_flags_come_from_the_findings_and_are_audited(services, stub_screener):
    ids = dict(zip(["normal-0.jpeg", "normal-1.jpeg", "pneumonia-0.jpeg"],
                   _add_studies(services, chest_films(normal=2, pneumonia=1))))

    assert pipeline.run_batch(services.sessions, services.storage, stub_screener, list(ids.values()))["done"] == 3

    with services.sessions() as session:
        flags = dict(session.execute(select(ReviewFlag.study_id, ReviewFlag.reasons)).all())
        assert flags == {ids["normal-0.jpeg"]: ["near_threshold"], ids["normal-1.jpeg"]: ["near_threshold"]}
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "study.flag")).all()
        assert {event.object_id: event.detail["reasons"] for event in events} == flags
        pneumonia = session.get(Study, ids["pneumonia-0.jpeg"])
        assert pneumonia.flag is None and pneumonia.prediction.prediction == "PNEUMONIA"
        assert pneumonia.prediction.model_version == stub_screener.version


def test_running_a_batch_twice_adds_nothing(services):
    ids = _add_studies(services, chest_films(normal=2))
    screener = pipeline.load_screener(services.settings)
    pipeline.run_batch(services.sessions, services.storage, screener, ids)

    again = pipeline.run_batch(services.sessions, services.storage, screener, ids)

    assert again == {"done": 0, "error": 0, "skipped": 0}
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 2


def test_a_study_that_keeps_crashing_workers_ends_in_error(services):
    ids = _add_studies(services, {"film.jpeg": chest_film()})
    with services.sessions.begin() as session:
        session.get(Study, ids[0]).attempts = pipeline.MAX_ATTEMPTS
    screener = pipeline.load_screener(services.settings)

    pipeline.run_batch(services.sessions, services.storage, screener, ids)

    with services.sessions() as session:
        study = session.get(Study, ids[0])
        assert study.status == "error" and "gave up after" in study.error


def test_missing_stored_file_is_an_error_not_a_crash(services):
    ids = _add_studies(services, chest_films(normal=2))
    with services.sessions() as session:
        services.storage.path(session.get(Study, ids[0]).storage_key).unlink()
    screener = pipeline.load_screener(services.settings)

    counts = pipeline.run_batch(services.sessions, services.storage, screener, ids)

    assert counts["done"] == 1 and counts["error"] == 1
    with services.sessions() as session:
        assert session.get(Study, ids[0]).error == "stored file is missing"


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_each_result_records_the_precision_its_models_computed_in(services, tiny_weights, precision):
    from web.queries import study_json

    ids = _add_studies(services, chest_films(normal=1, pneumonia=1))
    pipeline.run_batch(services.sessions, services.storage, Screener.load(tiny_weights, precision=precision), ids)
    with services.sessions() as session:
        studies = session.scalars(select(Study).where(Study.id.in_(ids))).all()
        assert [study.prediction.details["precision"] for study in studies] == [precision] * 2
        assert [study_json(study)["model_precision"] for study in studies] == [precision] * 2


def test_screen_files_keeps_order_with_bad_items_between_good_ones(tiny_weights):
    screener = Screener.load(tiny_weights)
    good = png_bytes(np.full((64, 80), 128, np.uint8))
    outcomes = pipeline.screen_files(screener, [good, b"", b"not an image", good])
    assert [o.error is None for o in outcomes] == [True, False, False, True]
    assert outcomes[1].error == "empty file"
    assert outcomes[0].finding is not None and outcomes[3].finding is not None


PRELOAD = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from core.settings import Settings
from worker import pipeline
settings = Settings.from_env({"PNEUMOSCREEN_WEIGHTS_DIR": sys.argv[1], "PNEUMOSCREEN_MODEL_THREADS": "1",
                              "PNEUMOSCREEN_BATCH_SIZE": "4", "PNEUMOSCREEN_DATA_DIR": sys.argv[2],
                              "PNEUMOSCREEN_MODEL_PRECISION": "bfloat16"})
thread = pipeline.preload(settings)
assert pipeline.preload(settings) is thread  # once per process (the solo pool signals twice)
screener = pipeline.load_screener(settings)  # a task arriving at once waits for the preload
thread.join()
import tensorflow as tf
print(tf.config.threading.get_intra_op_parallelism_threads(), pipeline._loaded.cache_info().misses,
      screener is pipeline.load_screener(settings), screener.precision)
"""


@pytest.mark.slow
def test_preload_sets_the_model_threads_and_precision_and_a_task_waits_for_it(tiny_weights, tmp_path):
    """In a fresh process, as in a worker's pool child: the threads are set before TensorFlow's first operation,
    the models load once, in the settings' precision, and a task that comes meanwhile gets the preloaded ones."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(pipeline.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", PRELOAD, str(tiny_weights), str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-4:] == ["1", "1", "True", "bfloat16"], done.stdout
    assert "models loaded and run once at batch size 4" in done.stderr
