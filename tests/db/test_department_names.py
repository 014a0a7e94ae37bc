"""0009: department names become unique whatever their case; existing case-duplicates are renamed, not merged
(nothing moves between departments), and the database then refuses a new one. On SQLite and PostgreSQL."""
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from db.migrate import alembic_config
from tests.db.test_migrations import empty_url  # noqa: F401 (the fixture: an empty database of each kind)


def test_case_duplicates_are_renamed_and_then_refused(empty_url):  # noqa: F811
    config = alembic_config(empty_url)
    command.upgrade(config, "0008")
    engine = sa.create_engine(empty_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO departments (id, name, created_at) VALUES "
                                   "(1, 'Radiology North', :now), (2, 'radiology north', :now), (3, 'Chest', :now)"),
                           {"now": now})
        connection.execute(sa.text(
            "INSERT INTO users (id, username, password_hash, role, active, session_epoch, department_id, created_at) "
            "VALUES (1, 'u', '', 'uploader', true, 0, 2, :now)"), {"now": now})
    command.upgrade(config, "head")
    with engine.begin() as connection:
        names = dict(connection.execute(sa.text("SELECT id, name FROM departments ORDER BY id")).all())
        assert names == {1: "Radiology North", 2: "radiology north (#2)", 3: "Chest"}
        assert connection.execute(sa.text("SELECT department_id FROM users WHERE id = 1")).scalar() == 2
    with pytest.raises(sa.exc.IntegrityError, match="uq_departments_name_lower"):
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO departments (id, name, created_at) VALUES (10, 'CHEST', :now)"),
                               {"now": now})
    command.downgrade(config, "0008")  # and back: the index goes with 0009
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO departments (id, name, created_at) VALUES (10, 'CHEST', :now)"),
                           {"now": now})
    engine.dispose()
