"""Recalibration fits the flag policy on mc_high under the calibration it refits, not the one classifier.json
held when it started (after a new member is trained, that one is stale)."""
import json
import shutil

import numpy as np
import pytest

import training.recalibrate as recalibrate_module
from models.screener import Screener
from tests.helpers import chest_films
from training.data import list_images, load_films, patient_split

PER_CLASS = 12
# Far from anything Platt scaling fits on untrained logits near 0 with balanced classes.
STALE = {"method": "platt", "scale": 4.0, "bias": 3.0}


@pytest.mark.slow  # a whole recalibration over a folder of films
def test_flag_policy_uses_mc_high_under_the_refitted_calibration(tmp_path, tiny_bundle, monkeypatch):
    data = tmp_path / "data"
    for label, films in (("NORMAL", chest_films(normal=PER_CLASS)), ("PNEUMONIA", chest_films(0, PER_CLASS))):
        (data / label).mkdir(parents=True)
        for name, content in films.items():
            (data / label / name).write_bytes(content)
    weights = tmp_path / "weights"
    shutil.copytree(tiny_bundle, weights)
    meta = json.loads((weights / "classifier.json").read_text())
    (weights / "classifier.json").write_text(json.dumps({**meta, "calibration": STALE}))

    seen = []  # (probability, mc_high) of every film the flag policy was scored on
    real = recalibrate_module.flag_reasons

    def spy(policy, prob, threshold, mc_high, *rest):
        seen.append((float(prob), float(mc_high)))
        return real(policy, prob, threshold, mc_high, *rest)

    monkeypatch.setattr(recalibrate_module, "flag_reasons", spy)
    refitted = recalibrate_module.recalibrate(data, weights, command="test", scope_dir=tmp_path / "no-scope")

    assert refitted["calibration"] != STALE
    # The validation films through the recalibrated bundle, so under the refitted calibration.
    paths, labels = list_images(data)
    _, val = patient_split(paths, labels)
    expected = Screener.load(weights, with_scope=False).run(load_films([paths[i] for i in val]))
    assert len(seen) == 2 * len(val)  # the policy is scored twice: before and after the band is chosen
    for scored in (seen[:len(val)], seen[len(val):]):
        prob, mc_high = np.array(scored).T
        np.testing.assert_allclose(prob, expected.probability, atol=1e-5)
        np.testing.assert_allclose(mc_high, expected.mc_high, atol=1e-5)
