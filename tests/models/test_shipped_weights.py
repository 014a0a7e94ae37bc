"""The shipped weights load and separate a handful of real NORMAL and PNEUMONIA training films."""
from pathlib import Path

import numpy as np
import pytest

from models.crop import FALLBACK_BOX
from models.imaging import decode_image
from models.screener import Screener
from training.evaluate import roc_auc

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"

PER_CLASS = 8


def pick(folder, count: int) -> list:
    paths = sorted(folder.glob("*.jpeg"))
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]


@pytest.mark.slow  # the shipped models on real films
def test_shipped_weights_separate_real_films(data_dir):
    screener = Screener.load(WEIGHTS_DIR)
    assert screener.name == "pneumoscreen-cnn" and "+" in screener.version
    assert 0.0 < screener.threshold <= 0.5
    paths = pick(data_dir / "kermany-train" / "NORMAL", PER_CLASS) + pick(
        data_dir / "kermany-train" / "PNEUMONIA", PER_CLASS)
    labels = np.r_[np.zeros(PER_CLASS), np.ones(PER_CLASS)]
    findings = screener.screen([decode_image(p.read_bytes()) for p in paths])
    probs = np.array([f.probability for f in findings])
    assert probs[labels == 1].mean() > probs[labels == 0].mean() + 0.3, probs
    assert roc_auc(probs, labels) > 0.9, probs
    # The segmenter must find clear normal lungs, not fall back to the central box.
    assert sum(f.crop_box == FALLBACK_BOX for f in findings) <= 1


def test_shipped_ensemble_files_are_the_trained_ones():
    import hashlib
    import json

    from training.classifier import ensemble_version

    meta = json.loads((WEIGHTS_DIR / "classifier.json").read_text())
    members = meta["members"]
    assert [m["file"] for m in members] == ["classifier.keras"] + [f"classifier-{i}.keras" for i in
                                                                  range(1, len(members))]
    for member in members:
        # Each member's version ends with the first 8 hex of its file's sha256, written when it was saved.
        digest = hashlib.sha256((WEIGHTS_DIR / member["file"]).read_bytes()).hexdigest()[:8]
        assert member["version"].endswith(f"+{digest}"), member["file"]
        # Recorded when the shipped members were trained, before `python -m training` took over.
        assert member["command"].startswith("python -m models.train --classifier")
    assert meta["version"] == ensemble_version([m["version"] for m in members])
    assert set(meta["calibration"]) == {"method", "scale", "bias"} and meta["calibration"]["scale"] > 0
