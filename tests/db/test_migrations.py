"""Migrations carry existing rows: comma-joined flag reasons (0002) become lists (0003) and back."""
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command

from db.migrate import alembic_config
from tests.helpers import POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"pneumoscreen_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _flags(engine) -> dict:
    columns = {column["name"] for column in sa.inspect(engine).get_columns("review_flags")}
    name = "reasons" if "reasons" in columns else "reason"
    table = sa.Table("review_flags", sa.MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(table.c.id, table.c[name]).order_by(table.c.id)).all())


def test_flag_reasons_move_to_a_list_and_back(empty_url):
    config = alembic_config(empty_url)
    command.upgrade(config, "0002")
    engine = sa.create_engine(empty_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO users (id, username, password_hash, role, active, created_at) "
            "VALUES (1, 'u', '', 'uploader', true, :now)"), {"now": now})
        connection.execute(sa.text("INSERT INTO batches (id, created_by, source, created_at) "
                                   "VALUES (1, 1, 'api', :now)"), {"now": now})
        for study_id in (1, 2):
            connection.execute(sa.text(
                "INSERT INTO studies (id, batch_id, filename, content_sha256, storage_key, status, attempts, "
                "created_at) VALUES (:id, 1, 'f.png', 'x', 'k', 'done', 1, :now)"), {"id": study_id, "now": now})
        connection.execute(sa.text(
            "INSERT INTO review_flags (id, study_id, reason, status, created_at) VALUES "
            "(1, 1, 'out_of_scope,near_threshold', 'open', :now), (2, 2, 'uncertain', 'closed', :now)"),
            {"now": now})
    command.upgrade(config, "head")
    assert _flags(engine) == {1: ["out_of_scope", "near_threshold"], 2: ["uncertain"]}
    command.downgrade(config, "0002")
    assert _flags(engine) == {1: "out_of_scope,near_threshold", 2: "uncertain"}
    engine.dispose()


def test_existing_images_join_study_results_and_get_computed(empty_url):
    """0009: images there before are grouped per department and StudyInstanceUID (a PNG alone), then
    `pneumoscreen db upgrade` computes their results."""
    from db.models import StudyResult
    from db.session import one_off_session
    from studies.results import refresh_backfilled

    config = alembic_config(empty_url)
    command.upgrade(config, "0008")
    engine = sa.create_engine(empty_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO departments (id, name, created_at) VALUES (1, 'A', :now), "
                                   "(2, 'B', :now)"), {"now": now})
        connection.execute(sa.text(
            "INSERT INTO users (id, username, password_hash, role, active, session_epoch, created_at) "
            "VALUES (1, 'u', '', 'uploader', true, 0, :now)"), {"now": now})
        connection.execute(sa.text("INSERT INTO batches (id, created_by, department_id, source, created_at) "
                                   "VALUES (1, 1, 1, 'api', :now), (2, 1, 2, 'api', :now)"), {"now": now})
        for study_id, batch_id, uid, view in ((1, 1, "1.2.3", "PA"), (2, 1, "1.2.3", "LL"), (3, 2, "1.2.3", "PA"),
                                              (4, 1, None, None)):
            connection.execute(sa.text(
                "INSERT INTO studies (id, batch_id, filename, content_sha256, storage_key, status, attempts, "
                "created_at, study_instance_uid, view_position, modality) "
                "VALUES (:id, :batch, 'f', :sha, 'k', 'done', 1, :now, :uid, :view, :modality)"),
                {"id": study_id, "batch": batch_id, "sha": str(study_id), "now": now, "uid": uid, "view": view,
                 "modality": "CR" if uid else None})
            connection.execute(sa.text(
                "INSERT INTO predictions (study_id, model_name, model_version, probability, prediction, threshold, "
                "crop_box, created_at) VALUES (:id, 'm', 'v', :p, :call, 0.5, '[0, 0, 1, 1]', :now)"),
                {"id": study_id, "p": 0.1 * study_id, "call": "NORMAL", "now": now})
    engine.dispose()
    command.upgrade(config, "head")
    with one_off_session(empty_url, write=True) as session:
        assert refresh_backfilled(session) == 3
    with one_off_session(empty_url) as session:
        results = {tuple(image.id for image in result.images): result
                   for result in session.scalars(sa.select(StudyResult)).all()}
        assert set(results) == {(1, 2), (3,), (4,)}
        assert (results[(1, 2)].scope, results[(1, 2)].decided_by_image_id, results[(1, 2)].status) == \
            ("in_scope", 1, "final")
        assert results[(3,)].department_id == 2 and results[(4,)].study_instance_uid is None
        assert refresh_backfilled(session) == 0
