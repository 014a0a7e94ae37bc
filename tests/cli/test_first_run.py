"""A newcomer's first commands, in an empty folder: a result or one clear line, never a traceback."""
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.helpers import POSTGRES_URL, REPO


def _run(args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PNEUMOSCREEN_") and key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    environment.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pneumoscreen", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_users_create_in_an_empty_folder_sets_up_the_embedded_database(tmp_path):
    result = _run(["users", "create", "ana", "--role", "uploader"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created uploader 'ana'" in result.stdout and "Traceback" not in result.stderr
    assert (tmp_path / "var" / "pneumoscreen.db").is_file()
    again = _run(["users", "create", "ana", "--role", "uploader"], tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("args, message", [
    (["screen", "no-such-film.png"], "no such file or folder"),
    (["evaluate", "no-such-folder"], "does not exist"),
    (["users", "create", "bo", "--role", "boss"], "Invalid value for '--role'"),
    (["frobnicate"], "No such command"),
])
def test_mistakes_get_one_clear_line(tmp_path, args, message):
    result = _run(args, tmp_path, PNEUMOSCREEN_WEIGHTS_DIR=str(REPO / "models" / "weights"))
    output = result.stdout + result.stderr
    assert message in output and "Traceback" not in output


def test_bad_settings_are_named_not_traced(tmp_path):
    result = _run(["users", "create", "ana", "--role", "uploader"], tmp_path, PNEUMOSCREEN_SECURE_COOKIES="maybe")
    assert result.returncode == 1 and "PNEUMOSCREEN_SECURE_COOKIES must be on or off" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a fresh `pneumoscreen` process
def test_an_unmigrated_postgresql_database_says_what_to_run(tmp_path):
    name = f"pneumoscreen_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        result = _run(["users", "create", "ana", "--role", "uploader"], tmp_path, DATABASE_URL=url)
        assert result.returncode == 1 and "run `pneumoscreen db upgrade`" in result.stderr
        assert "Traceback" not in result.stderr
        assert _run(["db", "upgrade"], tmp_path, DATABASE_URL=url).returncode == 0
        assert _run(["users", "create", "ana", "--role", "uploader"], tmp_path, DATABASE_URL=url).returncode == 0
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_an_unreachable_database_is_one_line(tmp_path):
    result = _run(["users", "create", "ana", "--role", "uploader"], tmp_path,
                  DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1 and "cannot use the database" in result.stderr
    assert "Traceback" not in result.stderr
