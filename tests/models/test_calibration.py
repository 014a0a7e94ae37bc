"""AUC, threshold and flag-band helpers on small hand-made score sets."""
import numpy as np

from models.calibration import Calibration, choose_flag_band, choose_threshold, log_loss
from training.data import patient_id
from training.evaluate import binary_metrics, roc_auc


def test_roc_auc_matches_hand_counts():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


def test_threshold_keeps_sensitivity_and_cap():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, int), np.ones(300, int)]
    probs = np.r_[rng.beta(2, 5, 200), rng.beta(5, 2, 300)]
    threshold = choose_threshold(probs, labels, 0.99)
    assert threshold <= 0.5
    assert binary_metrics(probs, labels, threshold)["sensitivity"] >= 0.99
    band = choose_flag_band(probs, labels, threshold, 0.15)
    assert band["flag_band_low"] <= threshold
    assert band["normal_calls_flagged_share"] <= 0.16


def test_platt_recovers_scale_and_bias():
    # Labels drawn from sigmoid(0.5 * z - 1.5); the model reports z: over-confident and shifted.
    rng = np.random.default_rng(0)
    z = rng.normal(2.0, 4.0, 20000)
    labels = (rng.random(len(z)) < 1 / (1 + np.exp(-(0.5 * z - 1.5)))).astype(float)
    fitted = Calibration.fit(z, labels)
    assert abs(fitted.scale - 0.5) < 0.05 and abs(fitted.bias + 1.5) < 0.1
    assert log_loss(fitted(z), labels) < log_loss(Calibration()(z), labels)
    assert Calibration.from_meta({"calibration": fitted.to_meta()}) == fitted


def test_patient_ids_from_file_names():
    assert patient_id("person1000_bacteria_2931.jpeg") == patient_id("person1000_virus_1681.jpeg") == "p1000"
    assert patient_id("IM-0115-0001.jpeg") == patient_id("NORMAL2-IM-0115-0002.jpeg") == "n115"
