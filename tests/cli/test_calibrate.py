"""`pneumoscreen calibrate`, `calibration list|activate` and `screen --department`, on SQLite and PostgreSQL."""
import csv

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db.models import AuditEvent, SiteCalibration
from db.session import make_engine, make_session_factory
from pneumoscreen.cli import main
from tests.helpers import chest_films


def _labelled_folder(root, normal: int, pneumonia: int, seed: int = 0):
    for name, data in chest_films(normal, pneumonia, seed=seed).items():
        label = "PNEUMONIA" if name.startswith("pneumonia") else "NORMAL"
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_bytes(data)
    return root


def _env(tmp_path, database_url, tiny_weights) -> dict[str, str]:
    return {"PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": database_url,
            "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights)}


@pytest.mark.slow  # calibrates and screens folders of films through the CLI, on both databases
def test_calibrate_stores_versions_that_screen_uses_and_that_roll_back(tmp_path, database_url, tiny_weights):
    env, run = _env(tmp_path, database_url, tiny_weights), CliRunner().invoke
    folder = _labelled_folder(tmp_path / "sample", 10, 10)
    (folder / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)

    first = run(main, ["calibrate", str(folder), "--department", "Ward A", "--miss-rate", "0.1",
                       "--roc", str(tmp_path / "roc.png")], env=env)
    assert first.exit_code == 0, first.output
    assert "operating point version 1 is now active" in first.output and "skipped" in first.output
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    second = run(main, ["calibrate", str(_labelled_folder(tmp_path / "more", 12, 12, seed=50)),
                        "--department", "Ward A", "--miss-rate", "0.1"], env=env)
    assert second.exit_code == 0 and "version 2 is now active" in second.output

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        rows = session.scalars(select(SiteCalibration).order_by(SiteCalibration.version)).all()
        assert [(row.version, row.active, row.n_pneumonia, row.n_normal) for row in rows] == [
            (1, False, 10, 10), (2, True, 12, 12)]
        assert rows[0].data_sha256 != rows[1].data_sha256 and rows[0].roc_png[:4] == b"\x89PNG"
        created = session.scalars(select(AuditEvent).where(AuditEvent.action == "calibration.create")).all()
        assert [event.detail["version"] for event in created] == [1, 2]
        assert all(event.detail["by"].startswith("cli:") for event in created)
        version_1 = rows[0].threshold

    back = run(main, ["calibration", "activate", "--department", "Ward A", "--version", "1"], env=env)
    assert back.exit_code == 0, back.output
    listing = run(main, ["calibration", "list", "--department", "Ward A"], env=env)
    assert listing.output.splitlines()[1].startswith("* v1") and listing.output.splitlines()[0].startswith("  v2")
    with sessions() as session:
        assert session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "calibration.activate")) \
            ["version"] == 1
    engine.dispose()

    out = tmp_path / "screened.csv"
    screened = run(main, ["screen", str(folder), "--department", "Ward A", "--csv", str(out)], env=env)
    assert screened.exit_code == 0, screened.output
    rows = [row for row in csv.DictReader(out.open()) if row["status"] == "done"]
    assert len(rows) == 20
    for row in rows:  # the calls follow version 1's threshold
        assert row["prediction"] == ("PNEUMONIA" if float(row["probability"]) >= round(version_1, 4) else "NORMAL") \
            or abs(float(row["probability"]) - version_1) < 1e-4


def test_calibrate_refuses_what_cannot_support_the_target(tmp_path, database_url, tiny_weights):
    env, run = _env(tmp_path, database_url, tiny_weights), CliRunner().invoke
    small = run(main, ["calibrate", str(_labelled_folder(tmp_path / "s", 10, 10)), "--department", "Ward B"],
                env=env)
    assert small.exit_code == 1 and "needs at least 49 pneumonia films" in small.output
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)
    missing = run(main, ["calibrate", str(tmp_path / "empty"), "--department", "Ward B"], env=env)
    assert missing.exit_code == 1 and "PNEUMONIA is missing" in missing.output
    unknown = run(main, ["screen", str(tmp_path / "s"), "--department", "Nowhere"], env=env)
    assert unknown.exit_code == 1 and "has no operating point" in unknown.output
    rollback = run(main, ["calibration", "activate", "--department", "Ward B", "--version", "3"], env=env)
    assert rollback.exit_code == 1 and "has no operating point version 3" in rollback.output
