"""Drift against the validation reference: PSI by hand, stable and shifted weeks, the reference from training."""
import math

import numpy as np
import pytest

from models.drift import FEATURES, Reference, psi_chart_png


def _reference(values: np.ndarray) -> Reference:
    return Reference.fit("v", {"probability": values}, values > 0.5, np.zeros(len(values), bool))


def test_psi_matches_a_hand_computation():
    reference = Reference("v", 4, 0.5, 0.0, {"probability": [0.5]}, {"probability": [0.5, 0.5]})
    # A week with 3 of 4 films above the one edge: (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5).
    expected = -0.25 * math.log(0.5) + 0.25 * math.log(1.5)
    assert reference.psi("probability", np.array([0.1, 0.7, 0.8, 0.9])) == pytest.approx(expected)


def test_the_same_population_is_stable_and_a_moved_one_is_not():
    rng = np.random.default_rng(0)
    reference = _reference(rng.normal(0, 1, 5000))
    assert len(reference.edges["probability"]) == 9 and sum(reference.expected["probability"]) == pytest.approx(1)
    assert reference.psi("probability", rng.normal(0, 1, 500)) < 0.1
    assert reference.psi("probability", rng.normal(0.8, 1, 500)) >= 0.25


def test_the_reference_saves_and_loads(tmp_path):
    reference = _reference(np.linspace(0, 1, 101))
    reference.save(tmp_path / "reference.json")
    assert Reference.load(tmp_path / "reference.json") == reference
    assert Reference.load(tmp_path / "missing.json") is None


def test_the_reference_comes_from_the_serving_path(tiny_weights):
    from models.crop import squash
    from models.imaging import decode_image
    from models.screener import Screener
    from tests.helpers import chest_films
    from training.reference import fit_reference

    screener = Screener.load(tiny_weights)
    films = np.stack([squash(decode_image(data)) for data in chest_films(12, 12).values()])
    reference = fit_reference(screener, films, command="test")
    assert reference.n == 24 and set(reference.edges) == set(FEATURES) == set(reference.expected)
    assert reference.model_version == screener.version and 0.0 <= reference.call_rate <= 1.0
    assert all(sum(shares) == pytest.approx(1.0, abs=1e-4) for shares in reference.expected.values())


def test_the_chart_is_a_png():
    png = psi_chart_png("Ward", ["2026-W01", "2026-W02"], {"probability": [0.05, 0.4], "film_mean": [None, 0.1]})
    assert png[:4] == b"\x89PNG"
