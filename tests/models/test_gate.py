"""The learned out-of-scope gate: fitted on constructed features, and the shipped gate on held-out real films."""
from pathlib import Path

import numpy as np
import pytest

from models.imaging import decode_image
from models.reasons import FlagReason
from models.scope import STATS, ScopeModel, fit_scope
from training.gate import (
    DRESSINGS,
    HOLDOUT_SHARE,
    SCOPE_GROUPS,
    choose_limit,
    dress,
    fit_learned,
    gate_inputs,
    list_scope,
    scope_split,
    widen_guard,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"
SAMPLE = 120


def constructed(seed: int = 0, dims: int = 10):
    """In-scope films around 0; out-of-scope films shifted along two feature directions only."""
    rng = np.random.default_rng(seed)
    stats = len(STATS)
    inside_f, inside_s = rng.normal(size=(600, dims)), rng.normal(size=(600, stats))
    outside_f, outside_s = rng.normal(size=(300, dims)), rng.normal(size=(300, stats))
    outside_f[:, :2] += 4.0
    return inside_f, inside_s, outside_f, outside_s


def statistics_gate(features, stats) -> ScopeModel:
    return fit_scope(features, np.arange(len(features)) % 2, stats, components=4)


def test_learned_gate_flags_what_it_was_shown_and_passes_the_rest(tmp_path):
    inside_f, inside_s, outside_f, outside_s = constructed()
    model = fit_learned(statistics_gate(inside_f, inside_s), gate_inputs(inside_f, inside_s),
                        gate_inputs(outside_f, outside_s))
    # Fresh draws of both classes: the shift, not memorised points, decides.
    new_in_f, new_in_s, new_out_f, new_out_s = constructed(seed=1)
    assert widen_guard(model, [new_in_f], [new_in_s], share=0.01) > 1.0  # fresh points lie a little further
    model.gate_limit = choose_limit(model, [new_in_f], [new_in_s], max_share=0.03)
    inside = model.scores(new_in_f, new_in_s)
    assert (np.maximum(inside["feature"], inside["stats"]) >= 1).mean() <= 0.01
    assert (inside["score"] >= 1).mean() <= 0.03
    assert (model.scores(new_out_f, new_out_s)["learned"] >= 1).mean() >= 0.95
    # It learned the two shifted directions, not the others.
    weights = np.abs(model.gate_weights)
    assert weights[:2].min() > 3 * weights[2:].max(), weights
    model.save(tmp_path / "scope.npz")
    again = ScopeModel.load(tmp_path / "scope.npz")
    np.testing.assert_allclose(again.scores(new_out_f, new_out_s)["score"],
                               model.scores(new_out_f, new_out_s)["score"], rtol=1e-3)


def test_limit_leaves_room_for_the_statistics_gate():
    inside_f, inside_s, outside_f, outside_s = constructed()
    model = fit_learned(statistics_gate(inside_f, inside_s), gate_inputs(inside_f, inside_s),
                        gate_inputs(outside_f, outside_s))
    widen_guard(model, [inside_f], [inside_s], share=0.005)
    odd = inside_s.copy()
    odd[:6, 0] += 50.0  # 1% of the films flagged by their statistics
    model.gate_limit = choose_limit(model, [inside_f], [odd], max_share=0.03)
    scores = model.scores(inside_f, odd)
    assert (scores["stats"][:6] >= 1).all()
    assert (scores["score"] >= 1).sum() <= int(0.03 * len(inside_f))
    assert (scores["learned"] >= 1).sum() >= 4  # the rest of the budget went to the learned part


def test_a_gate_without_the_learned_part_still_loads_and_scores(tmp_path):
    inside_f, inside_s, _, _ = constructed()
    model = statistics_gate(inside_f, inside_s)
    model.save(tmp_path / "scope.npz")
    again = ScopeModel.load(tmp_path / "scope.npz")
    assert again.gate_weights is None
    scores = again.scores(inside_f, inside_s)
    assert (scores["learned"] < 1e-6).all()
    np.testing.assert_allclose(scores["score"], np.maximum(scores["feature"], scores["stats"]))


def test_learned_gate_refuses_inputs_of_another_size():
    inside_f, inside_s, outside_f, outside_s = constructed()
    model = fit_learned(statistics_gate(inside_f, inside_s), gate_inputs(inside_f, inside_s),
                        gate_inputs(outside_f, outside_s))
    with pytest.raises(ValueError, match="another ensemble"):
        model.learned_logit(inside_f[:, :5], inside_s)


def test_each_dressing_gives_a_deterministic_film_in_range():
    film = np.tile(np.linspace(0, 1, 224, dtype=np.float32), (224, 1))
    for name in DRESSINGS:
        first = dress(film, name, np.random.default_rng(3))
        again = dress(film, name, np.random.default_rng(3))
        assert first.ndim == 2 and min(first.shape) >= 150, name
        assert 0 <= first.min() and first.max() <= 1, name
        np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="unknown dressing"):
        dress(film, "sepia", np.random.default_rng(0))


def test_scope_split_holds_out_a_fixed_share_of_each_group():
    groups = np.array([g for g, n in zip(SCOPE_GROUPS, (100, 10, 50)) for _ in range(n)])
    fit, held = scope_split(groups)
    assert not set(fit) & set(held) and len(fit) + len(held) == len(groups)
    for group, n in zip(SCOPE_GROUPS, (100, 10, 50)):
        assert (groups[held] == group).sum() == round(n * HOLDOUT_SHARE)
    np.testing.assert_array_equal(scope_split(groups)[1], held)


@pytest.fixture(scope="module")
def shipped():
    from models.screener import Screener

    return Screener.load(WEIGHTS_DIR)


def flagged(screener, paths) -> np.ndarray:
    findings = screener.screen([decode_image(p.read_bytes()) for p in paths])
    return np.array([FlagReason.OUT_OF_SCOPE in f.reasons for f in findings])


@pytest.mark.slow  # the shipped models on real films
def test_shipped_gate_passes_held_out_pediatric_films(shipped, data_dir):
    from training.data import list_images, patient_split

    paths, labels = list_images(data_dir / "kermany-train")
    _, val = patient_split(paths, labels)  # the split the gate's limit was set on, never fitted on
    picks = np.random.default_rng(0).choice(val, SAMPLE, replace=False)
    oos = flagged(shipped, [paths[i] for i in picks])
    assert oos.mean() <= 0.05, [paths[i].name for i in picks[oos]]


@pytest.mark.slow  # the shipped models on real films
def test_shipped_gate_flags_held_out_adult_frontal_films(shipped, data_dir):
    if not (data_dir / "scope" / "manifest.csv").is_file():
        pytest.skip(f"no out-of-scope films at {data_dir / 'scope'}")
    paths, groups = list_scope(data_dir / "scope")
    _, held = scope_split(groups)  # the 30% the gate was not fitted on
    adults = held[groups[held] == "adult-frontal"]
    picks = np.random.default_rng(0).choice(adults, min(SAMPLE, len(adults)), replace=False)
    oos = flagged(shipped, [paths[i] for i in picks])
    assert oos.mean() >= 0.85, f"{oos.mean():.1%} of {len(picks)} held-out adult films flagged"
