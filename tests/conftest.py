"""Shared fixtures: real PostgreSQL and Redis as CI runs them, SQLite for the embedded default.

Plain helpers (made films, the stub screener, login, free ports) live in tests/helpers.py.
"""
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from core.services import services_of
from core.settings import Settings
from db.migrate import upgrade
from tests.helpers import POSTGRES_URL, REDIS_URL, StubScreener


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained tiny segmenter + classifier: real Keras models, fast to load."""
    from tests.models.bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="session")
def postgres_template() -> str:
    """A migrated template database; each test copies it (CREATE DATABASE ... TEMPLATE is fast)."""
    name = f"pneumoscreen_tmpl_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    upgrade(_pg_url(name))
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(sql: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(sql)


def _pg_url(name: str) -> str:
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request, tmp_path) -> str:
    """A migrated, empty database of each kind the project supports."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        upgrade(url)
        yield url
        return
    template = request.getfixturevalue("postgres_template")
    name = f"pneumoscreen_test_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path, database_url, tiny_weights) -> Settings:
    """Settings for one test: its own database, storage, and the embedded broker."""
    return Settings.from_env({
        "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": database_url,
        "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights), "SECRET_KEY": "test-secret",
        "PNEUMOSCREEN_BATCH_SIZE": "4"})


@pytest.fixture
def app(settings):
    from pneumoscreen.app import create_app

    app = create_app(settings=settings)
    app.config.update(TESTING=True)
    yield app
    services_of(app).engine.dispose()


@pytest.fixture
def users(app) -> dict[str, str]:
    """One user per role; returns role -> API token."""
    from db.accounts import create_user, issue_token

    tokens = {}
    with services_of(app).sessions.begin() as session:
        for role in ("uploader", "reviewer", "admin"):
            tokens[role] = issue_token(session, create_user(session, role, role, f"{role}-password"))
    return tokens


@pytest.fixture
def stub_screener(monkeypatch) -> StubScreener:
    """A StubScreener, also what worker.pipeline.load_screener hands out (the Celery task's path)."""
    from worker import pipeline

    stub = StubScreener()
    monkeypatch.setattr(pipeline, "load_screener", lambda settings: stub)
    return stub


@pytest.fixture
def redis_app(tmp_path, database_url, tiny_weights):
    """An app on PostgreSQL and Redis (its own Redis database number, emptied first)."""
    from pneumoscreen.app import create_app

    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings.from_env({
        "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL, "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights),
        "SECRET_KEY": "test", "PNEUMOSCREEN_BATCH_SIZE": "4"})
    app = create_app(settings=settings)
    yield app
    services_of(app).engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()
