"""A site's operating point: conformal risk control on the miss rate, the exact bound, and the refusals."""
import math

import numpy as np
import pytest

from models.operating_point import OperatingPoint, choose, clopper_pearson_upper, describe, min_pneumonia_films, roc_png


def _sample(seed: int, n_pos: int, n_neg: int, separation: float = 1.5):
    rng = np.random.default_rng(seed)
    logits = np.r_[rng.normal(separation, 1.0, n_pos), rng.normal(-separation, 1.0, n_neg)]
    return 1 / (1 + np.exp(-logits)), np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]


def _never_flagged(probs):
    return lambda threshold: np.zeros(len(probs), bool)


def test_the_miss_rate_bound_holds_on_the_sample_and_on_new_films():
    probs, labels = _sample(0, 400, 400)
    choice = choose(probs, labels, _never_flagged(probs), miss_rate=0.02)
    assert choice.point.band_low <= choice.point.threshold
    # The conformal bound on the sample itself.
    assert (choice.missed + 1) / (choice.n_pneumonia + 1) <= 0.02
    # On many new samples from the same site the average miss rate stays within the target.
    rates = []
    for seed in range(1, 201):
        new_probs, new_labels = _sample(seed, 400, 400)
        rates.append(describe(choice.point, new_probs, new_labels, np.zeros(800, bool), 0.02).miss_rate)
    assert np.mean(rates) <= 0.02


def test_the_band_is_as_narrow_as_the_target_allows():
    # 49 pneumonia films: with a target of 0.02 the bound tolerates no miss at all.
    probs = np.r_[np.linspace(0.05, 0.45, 9), np.full(40, 0.9), np.linspace(0.01, 0.5, 60)]
    labels = np.r_[np.ones(49, int), np.zeros(60, int)]
    choice = choose(probs, labels, _never_flagged(probs), miss_rate=0.02)
    assert choice.missed == 0 and choice.point.band_low == pytest.approx(0.05)
    # Films flagged for other reasons are read anyway: the band may start above them.
    flagged = np.r_[np.ones(9, bool), np.zeros(100, bool)]
    assert choose(probs, labels, lambda t: flagged, miss_rate=0.02).point.band_low == choice.point.threshold


def test_too_few_pneumonia_films_are_refused_with_the_number_needed():
    assert min_pneumonia_films(0.02) == 49 and min_pneumonia_films(0.1) == 9
    probs, labels = _sample(0, 48, 100)
    with pytest.raises(ValueError, match="needs at least 49 pneumonia films"):
        choose(probs, labels, _never_flagged(probs), miss_rate=0.02)


@pytest.mark.parametrize("k, n", [(0, 50), (0, 200), (3, 100), (10, 200)])
def test_clopper_pearson_matches_a_hand_computation(k, n):
    upper = clopper_pearson_upper(k, n)
    # At the bound, the chance of k or fewer events is the 5% left over.
    cdf = sum(math.comb(n, i) * upper ** i * (1 - upper) ** (n - i) for i in range(k + 1))
    assert cdf == pytest.approx(0.05, abs=1e-6)
    if k == 0:
        assert upper == pytest.approx(1 - 0.05 ** (1 / n))


def test_a_point_needs_its_band_below_the_threshold():
    with pytest.raises(ValueError, match="band_low <= threshold"):
        OperatingPoint(threshold=0.2, band_low=0.3)


def test_the_roc_picture_is_a_png():
    probs, labels = _sample(0, 60, 60)
    data = roc_png(probs, labels, OperatingPoint(0.5, 0.3), "test")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
