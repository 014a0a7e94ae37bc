"""The classifier ensemble: mean logit, member disagreement in the spread, and member training."""
import json

import numpy as np
import pytest

from models.calibration import Calibration, sigmoid
from models.inference import ensemble_pass
from training.classifier import build_classifier, ensemble_version, member_file


def crops(n: int = 6, size: int = 64) -> np.ndarray:
    return np.random.default_rng(1).random((n, size, size), dtype=np.float32)


def member(seed: int, bias: float = 0.0):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_classifier(64, stem=4, widths=(8, 16))
    kernel, old_bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, old_bias + bias])
    return model


def test_ensemble_logit_is_the_mean_of_its_members():
    a, b = member(0), member(1)
    x = crops()
    both = ensemble_pass([a, b])(x, Calibration())
    alone = [ensemble_pass([m])(x, Calibration()) for m in (a, b)]
    np.testing.assert_allclose(both.logit, (alone[0].logit + alone[1].logit) / 2, atol=1e-5)
    np.testing.assert_allclose(both.probability, sigmoid(both.logit), atol=1e-9)
    # Features side by side (the scope gate sees every member), heatmap averaged and in [0, 1].
    assert both.features.shape == (len(x), alone[0].features.shape[1] * 2)
    np.testing.assert_allclose(both.heatmap, (alone[0].heatmap + alone[1].heatmap) / 2, atol=1e-5)
    assert 0.0 <= both.heatmap.min() and both.heatmap.max() <= 1.0


def test_member_disagreement_raises_the_predictive_spread():
    x = crops()
    calm = ensemble_pass([member(0), member(0)])(x, Calibration())
    # The same network twice, one copy shifted by +6 logits: the mean moves +3, half the samples +6.
    split = ensemble_pass([member(0), member(0, bias=6.0)])(x, Calibration())
    assert np.all(calm.member_spread < 1e-6)
    assert np.all(split.member_spread > 0.05)
    # The 90th percentile over both members' dropout samples sits with the confident member.
    shifted_alone = ensemble_pass([member(0, bias=6.0)])(x, Calibration())
    assert np.all(split.mc_high > split.probability)
    np.testing.assert_allclose(split.mc_high, shifted_alone.mc_high, atol=0.05)


def test_member_files_and_ensemble_version():
    assert [member_file(i) for i in range(3)] == ["classifier.keras", "classifier-1.keras", "classifier-2.keras"]
    assert ensemble_version(["0.1.0+aaaa1111"]) == "0.1.0+aaaa1111"
    two = ensemble_version(["0.1.0+aaaa1111", "0.1.0+bbbb2222"])
    assert two.startswith("0.1.0+") and two != ensemble_version(["0.1.0+aaaa1111", "0.1.0+cccc3333"])


def test_training_a_member_out_of_order_is_refused(tmp_path, tiny_bundle):
    from training.classifier import train_classifier

    (tmp_path / "classifier.json").write_text((tiny_bundle / "classifier.json").read_text())
    listed = len(json.loads((tmp_path / "classifier.json").read_text())["members"])
    with pytest.raises(ValueError, match=f"lists {listed} member"):
        train_classifier(tmp_path, tmp_path, tmp_path / "segmenter.keras", member=listed + 1)
