"""Time a /metrics scrape with many studies on PostgreSQL (default 20 000): first scrape (drift and QA computed)
and later ones (drift and QA cached for a minute).

    .venv/bin/python bench/metrics_scrape.py [--studies 20000] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""
import argparse
import random
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg

from core.settings import Settings
from db.migrate import upgrade
from db.models import Batch, Prediction, ReviewFlag, Study, User, utcnow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=20000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    name = f"pneumoscreen_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        run(url.replace("postgresql://", "postgresql+psycopg://"), args.studies)
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, count: int) -> None:
    from core.services import services_of
    from pneumoscreen.app import create_app

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env({"DATABASE_URL": url, "PNEUMOSCREEN_DATA_DIR": folder, "SECRET_KEY": "bench",
                                      "PNEUMOSCREEN_WEIGHTS_DIR": str(Path(__file__).parent.parent / "models" / "weights")})
        app = create_app(settings=settings)
        fill(services_of(app).sessions, count)
        client = app.test_client()
        started = time.perf_counter()
        assert client.get("/metrics").status_code == 200
        first = time.perf_counter() - started
        later = []
        for _ in range(10):
            started = time.perf_counter()
            client.get("/metrics")
            later.append(time.perf_counter() - started)
        print(f"{count} studies on PostgreSQL: first scrape {first * 1000:.0f} ms, "
              f"later scrapes median {statistics.median(later) * 1000:.0f} ms")
        services_of(app).engine.dispose()


def fill(sessions, count: int) -> None:
    """Studies a week old or less: 90% done (with predictions, a fifth flagged), 5% error, 5% queued."""
    rng, now = random.Random(0), utcnow()
    with sessions.begin() as session:
        user = User(username="bench", password_hash="x", role="uploader")
        session.add(user)
        session.flush()
        batch = Batch(created_by=user.id)
        session.add(batch)
        session.flush()
        for start in range(0, count, 1000):
            studies = []
            for i in range(start, min(count, start + 1000)):
                created = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
                kind = rng.random()
                status = "done" if kind < 0.9 else "error" if kind < 0.95 else "queued"
                begun = created + timedelta(seconds=rng.uniform(0, 60)) if status != "queued" else None
                studies.append(Study(batch_id=batch.id, filename=f"{i}.png", content_sha256=f"{i:064x}",
                                     storage_key=f"{i}", status=status, created_at=created, started_at=begun,
                                     finished_at=begun + timedelta(seconds=rng.uniform(0.1, 5)) if begun else None,
                                     error="unreadable" if status == "error" else None))
            session.add_all(studies)
            session.flush()
            for study in studies:
                if study.status == "done":
                    probability = rng.random()
                    session.add(Prediction(study_id=study.id, model_name="m", model_version="1", probability=probability,
                                           prediction="PNEUMONIA" if probability > 0.5 else "NORMAL", threshold=0.5,
                                           crop_box=[0, 0, 1, 1], created_at=study.finished_at))
                    if rng.random() < 0.2:
                        session.add(ReviewFlag(study_id=study.id, reasons=["near_threshold"]))


if __name__ == "__main__":
    main()
