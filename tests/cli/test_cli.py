"""The command line: screen over folders and zips with bad files among good ones, users, settings."""
import csv
import io
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pneumoscreen.cli import CSV_COLUMNS, main
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import REPO, chest_films, zip_bytes


@pytest.fixture
def env(tmp_path, tiny_weights) -> dict[str, str]:
    return {"PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights),
            "PNEUMOSCREEN_BATCH_SIZE": "3"}


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_screen_a_folder_recursively_with_a_corrupt_file(tmp_path, env):
    folder = tmp_path / "films"
    (folder / "NORMAL").mkdir(parents=True)
    (folder / "PNEUMONIA").mkdir()
    normal, pneumonia = chest_films(normal=2), chest_films(normal=0, pneumonia=2)
    for label, films in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        for name, data in films.items():
            (folder / label / name).write_bytes(data)
    (folder / "PNEUMONIA" / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    (folder / "ct.dcm").write_bytes(to_bytes(dataset(chest_pixels(), modality="CT", view=None)))
    out = tmp_path / "results.csv"

    result = CliRunner().invoke(main, ["screen", str(folder), "--csv", str(out)],
                                env={**env, "PNEUMOSCREEN_MODEL_PRECISION": "bfloat16"})

    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 6
    by_file = {row["file"]: row for row in rows}
    ct = by_file[str(folder / "ct.dcm")]  # routed as the service routes it: accepted, never screened
    assert (ct["status"], ct["probability"]) == ("not_applicable", "") and "CT" in ct["error"]
    corrupt = by_file[str(folder / "PNEUMONIA" / "corrupt.jpeg")]
    assert corrupt["status"] == "error" and corrupt["error"]
    for name in normal:
        row = by_file[str(folder / "NORMAL" / name)]
        assert row["status"] == "done" and row["prediction"] in ("NORMAL", "PNEUMONIA")
        assert 0 <= float(row["probability"]) <= 1 and row["flagged"] in ("true", "false")
    assert "6 images" in result.output and "4 done, 1 error, 1 not applicable" in result.output
    assert "model tiny-cnn 0.0.0+tiny in bfloat16" in result.output  # the setting reaches the models


def test_screen_a_zip_and_a_missing_path_to_stdout(tmp_path, env):
    films = chest_films(normal=0, pneumonia=2)
    archive = tmp_path / "batch.zip"
    archive.write_bytes(zip_bytes({f"scans/{name}": data for name, data in films.items()}
                                  | {"scans/readme.txt": b"not an image", "inner.zip": zip_bytes({})}))

    result = CliRunner().invoke(main, ["screen", str(archive), str(tmp_path / "nope")], env=env)

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_file = {row["file"]: row for row in rows}
    assert {by_file[f"{archive}/scans/{name}"]["status"] for name in films} == {"done"}
    assert by_file[f"{archive}/scans/readme.txt"]["error"] == "not a PNG, JPEG or DICOM image"
    assert "nested zip" in by_file[f"{archive}/inner.zip"]["error"]
    assert by_file[str(tmp_path / "nope")]["error"] == "no such file or folder"


def test_users_create_prints_a_token_once_and_reads_the_password_from_stdin(env):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    result = runner.invoke(main, ["users", "create", "rad1", "--role", "reviewer", "--password-stdin"],
                           env=env, input="long enough password\n")
    assert result.exit_code == 0, result.output
    assert "psk_" in result.output
    again = runner.invoke(main, ["users", "create", "rad1", "--role", "reviewer"], env=env)
    assert again.exit_code == 1 and "already exists" in again.output
    short = runner.invoke(main, ["users", "create", "rad2", "--role", "reviewer", "--password-stdin"],
                          env=env, input="short\n")
    assert short.exit_code == 1 and "at least 8" in short.output


def test_bad_settings_fail_at_start_with_the_setting_named(env):
    result = subprocess.run([sys.executable, "-m", "pneumoscreen", "db", "upgrade"], cwd=REPO,
                            env={**env, "PNEUMOSCREEN_BATCH_SIZE": "lots", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "PNEUMOSCREEN_BATCH_SIZE must be a whole number" in result.stderr


def test_train_refuses_an_ensemble_member_out_of_order(tmp_path, env, tiny_weights):
    (tmp_path / "classifier.json").write_text((tiny_weights / "classifier.json").read_text())
    result = CliRunner().invoke(main, ["train", "--member", "3", "--out", str(tmp_path), "--data", str(tmp_path)],
                                env=env)
    assert result.exit_code == 1
    assert "cannot train member 3" in result.output and "train member 2 first" in result.output
