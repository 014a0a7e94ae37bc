"""Training for real on a few made films: train_classifier alone leaves the ensemble uncalibrated, train_member
(what `python -m training --classifier` and `pneumoscreen train` run) adds a member and recalibrates."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from models.calibration import Calibration
from models.imaging import decode_image
from models.screener import Screener
from tests.helpers import chest_films
from training.classifier import ensemble_version, train_classifier
from training.commands import train_member

pytestmark = pytest.mark.slow  # trains for real, if only an epoch

PER_CLASS = 14


def test_train_classifier_then_train_member_recalibrates(tmp_path, tiny_bundle):
    data = tmp_path / "data"
    for label, films in (("NORMAL", chest_films(normal=PER_CLASS)), ("PNEUMONIA", chest_films(0, PER_CLASS))):
        (data / label).mkdir(parents=True)
        for name, content in films.items():
            (data / label / name).write_bytes(content)
    out = tmp_path / "weights"
    out.mkdir()
    for name in ("segmenter.keras", "segmenter.json", "scope.npz"):
        shutil.copy(tiny_bundle / name, out / name)

    first = train_classifier(data, out, out / "segmenter.keras", epochs=1, member=0, command="member 0")
    # Training alone does not recalibrate: a new ensemble is the identity calibration at 0.5, and the
    # stale gate (fitted on other features) is gone until recalibration writes a new one.
    assert json.loads((out / "classifier.json").read_text()) == first
    assert first["calibration"] == Calibration().to_meta() and first["threshold"] == first["flag_band_low"] == 0.5
    assert "recalibrate_command" not in first and "validation" not in first
    assert not (out / "scope.npz").exists()

    meta = train_member(data, out, out / "segmenter.keras", epochs=1, member=1, command="member 1")

    assert [m["file"] for m in meta["members"]] == ["classifier.keras", "classifier-1.keras"]
    assert meta["members"][0] == first["members"][0]  # adding a member leaves the others as they were
    assert meta["members"][1]["command"] == "member 1"
    for member in meta["members"]:
        digest = hashlib.sha256((out / member["file"]).read_bytes()).hexdigest()[:8]
        assert member["version"].endswith(f"+{digest}")
    assert meta["version"] == ensemble_version([m["version"] for m in meta["members"]]) != first["version"]
    # Recalibrated from the serving path: fitted calibration, a threshold, a flag policy and the gate.
    assert meta["calibration"]["method"] == "platt" and meta["calibration"] != Calibration().to_meta()
    assert 0.0 < meta["threshold"] <= 0.5 and meta["flag_band_low"] <= meta["threshold"]
    assert meta["validation"]["n"] == meta["split"]["n_val"] > 0
    assert all(isinstance(reason, str) for reason in meta["validation"]["flags"]["by_reason"])
    assert (out / "scope.npz").is_file() and meta["recalibrate_command"] == "member 1"
    assert json.loads((out / "classifier.json").read_text()) == meta
    screener = Screener.load(out)
    film = decode_image(next((data / "NORMAL").iterdir()).read_bytes())
    [finding] = screener.screen([film])
    assert np.isfinite(finding.probability) and finding.details["member_spread"] >= 0.0
