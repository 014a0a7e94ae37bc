"""AUC, threshold and flag-band helpers on small hand-made score sets."""
import numpy as np

from models.calibration import choose_flag_band, choose_threshold, fit_temperature
from models.evaluate import binary_metrics, roc_auc
from models.train import patient_id


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


def test_temperature_softens_overconfident_logits():
    labels = np.r_[np.zeros(50), np.ones(50)]
    logits = np.r_[np.full(40, -8.0), np.full(10, 8.0), np.full(40, 8.0), np.full(10, -8.0)]
    assert fit_temperature(logits, labels) > 2.0


def test_patient_ids_from_file_names():
    assert patient_id("person1000_bacteria_2931.jpeg") == patient_id("person1000_virus_1681.jpeg") == "p1000"
    assert patient_id("IM-0115-0001.jpeg") == patient_id("NORMAL2-IM-0115-0002.jpeg") == "n115"
