"""Real processes to break: our own Redis and PostgreSQL (own ports, own data), real worker processes."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import func, select

from core.services import services_of
from core.settings import Settings
from db.migrate import upgrade
from db.models import Prediction, Study
from pneumoscreen.app import create_app
from tests.helpers import REPO, free_port, wait_until

# Own instances on free ports, named per test run: several people may run the suite on one machine.
PG_VERSION = "15"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items) -> None:
    """Every test in this folder is slow: real processes killed and restarted, minutes of waiting."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)


class RedisServer:
    """A Redis that keeps nothing on disk, so a restart loses every queued message."""

    def __init__(self, port: int, workdir: Path):
        self.port, self.workdir, self.process = port, workdir, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: redis.Redis(port=self.port).ping(), "our Redis to answer")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(free_port(), tmp_path)
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server.start()
    yield server
    server.stop()


class Worker:
    """`python -m pneumoscreen worker` in its own process group, so kill -9 takes its pool children too."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log, self.process = env, log, None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "pneumoscreen", "worker"], cwd=REPO,
                                            env=self.env, stdout=log, stderr=log, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def fault_env(tmp_path: Path, database_url: str, broker_url: str, weights: Path) -> dict:
    """The environment a portal and its workers share; the sweeper runs often with short staleness."""
    return {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": broker_url,
            "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "PNEUMOSCREEN_WEIGHTS_DIR": str(weights),
            "SECRET_KEY": "fault-tests", "PNEUMOSCREEN_BATCH_SIZE": "4", "PNEUMOSCREEN_SWEEP_INTERVAL_S": "2",
            "PNEUMOSCREEN_STALE_QUEUED_S": "6", "PNEUMOSCREEN_STALE_RUNNING_S": "10",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def stack(tmp_path, tiny_weights):
    """Build (app, worker) pairs on given services (and PNEUMOSCREEN_* overrides); workers are stopped at the end."""
    made = []

    def build(database_url: str, broker_url: str, **settings: str):
        env = {**fault_env(tmp_path, database_url, broker_url, tiny_weights), **settings}
        app = create_app(settings=Settings.from_env(env))
        worker = Worker(env, tmp_path / "worker.log")
        made.append((app, worker))
        return app, worker

    yield build
    for app, worker in made:
        worker.stop()
        services_of(app).engine.dispose()
    log = tmp_path / "worker.log"
    if log.exists():
        print(log.read_text()[-3000:])


def counts(services, study_ids: list[int]) -> dict:
    """Where the studies stand, and how many predictions and result events they have."""
    with services.sessions() as session:
        by_status = dict(session.execute(select(Study.status, func.count()).where(Study.id.in_(study_ids))
                                         .group_by(Study.status)).all())
        predictions = session.scalar(select(func.count()).select_from(Prediction)
                                     .where(Prediction.study_id.in_(study_ids)))
    return {"done": by_status.get("done", 0), "error": by_status.get("error", 0),
            "queued": by_status.get("queued", 0), "running": by_status.get("running", 0),
            "predictions": predictions}


def _wait(check, what: str, timeout: float = 30) -> None:
    def safe():
        try:
            return check()
        except Exception:
            return False
    wait_until(safe, what, timeout, every=0.1)


class PostgresCluster:
    """A PostgreSQL cluster of our own (Debian's wrappers work as root; initdb does not)."""

    def __init__(self):
        self.name, self.port = f"faults{os.getpid()}", free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/pneumoscreen"

    def create(self) -> None:
        self.drop()  # a leftover from an interrupted run
        subprocess.run(["pg_createcluster", PG_VERSION, self.name, "-p", str(self.port), "--start",
                        "--", "--auth=trust"], check=True, capture_output=True)
        _wait(lambda: psycopg.connect(self.admin_url).close() or True, "our PostgreSQL to answer")
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute("CREATE DATABASE pneumoscreen")
        upgrade(self.url)

    def stop(self) -> None:
        subprocess.run(["pg_ctlcluster", PG_VERSION, self.name, "stop", "-m", "fast"], check=True,
                       capture_output=True)

    def start(self) -> None:
        subprocess.run(["pg_ctlcluster", PG_VERSION, self.name, "start"], check=True, capture_output=True)
        _wait(lambda: psycopg.connect(self.admin_url).close() or True, "our PostgreSQL to come back")

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", PG_VERSION, self.name, "--stop"], capture_output=True)


@pytest.fixture
def own_postgres():
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's pg_createcluster, run as root")
    cluster = PostgresCluster()
    cluster.create()
    yield cluster
    cluster.drop()
