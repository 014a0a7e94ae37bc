"""`python -m models.train --classifier`: two ensemble members trained for real on a few films."""
import hashlib
import json
import shutil

import numpy as np

from models.classifier import ensemble_version, train_classifier
from models.imaging import decode_image
from models.screener import Screener

PER_CLASS = 14


def test_two_members_train_into_one_recalibrated_bundle(tmp_path, data_dir, tiny_bundle):
    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (data / label).mkdir(parents=True)
        for path in sorted((data_dir / "kermany-train" / label).glob("*.jpeg"))[:PER_CLASS]:
            (data / label / path.name).symlink_to(path)
    out = tmp_path / "weights"
    out.mkdir()
    for name in ("segmenter.keras", "segmenter.json"):
        shutil.copy(tiny_bundle / name, out / name)

    first = train_classifier(data, out, out / "segmenter.keras", epochs=1, member=0, command="member 0")
    meta = train_classifier(data, out, out / "segmenter.keras", epochs=1, member=1, command="member 1")

    assert [m["file"] for m in meta["members"]] == ["classifier.keras", "classifier-1.keras"]
    assert meta["members"][0] == first["members"][0]  # adding a member leaves the others as they were
    for member in meta["members"]:
        digest = hashlib.sha256((out / member["file"]).read_bytes()).hexdigest()[:8]
        assert member["version"].endswith(f"+{digest}")
    assert meta["version"] == ensemble_version([m["version"] for m in meta["members"]]) != first["version"]
    # Recalibrated from the serving path: fitted calibration, a threshold, a flag policy and the gate.
    assert meta["calibration"]["method"] == "platt" and meta["calibration"] != {"method": "platt", "scale": 1.0,
                                                                                "bias": 0.0}
    assert 0.0 < meta["threshold"] <= 0.5 and meta["flag_band_low"] <= meta["threshold"]
    assert meta["validation"]["n"] == meta["split"]["n_val"] > 0
    assert (out / "scope.npz").is_file() and meta["recalibrate_command"] == "member 1"
    screener = Screener.load(out)
    film = decode_image(next((data / "NORMAL").iterdir()).read_bytes())
    [finding] = screener.screen([film])
    assert np.isfinite(finding.probability) and finding.details["member_spread"] >= 0.0
