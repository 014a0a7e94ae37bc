"""Temperature scaling, the screening threshold and the near-threshold flag band, fitted on validation."""
import logging

import numpy as np

logger = logging.getLogger(__name__)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the validation log-loss of sigmoid(logit / T) (grid search)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    labels = np.asarray(labels, np.float64)

    def nll(t: float) -> float:
        p = np.clip(sigmoid(logits / t), 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    losses = [nll(t) for t in grid]
    best = float(grid[int(np.argmin(losses))])
    logger.info("temperature %.3f: log-loss %.4f -> %.4f", best, nll(1.0), min(losses))
    return best


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_sensitivity: float = 0.99,
                     cap: float = 0.5) -> float:
    """Highest threshold keeping validation sensitivity >= target, never above `cap`."""
    positives = np.sort(probs[labels == 1])
    misses_allowed = int(np.floor((1 - target_sensitivity) * len(positives)))
    # Calls are `prob >= threshold`: at most `misses_allowed` positives may fall below it.
    threshold = float(positives[misses_allowed]) if len(positives) else cap
    return float(np.floor(min(threshold, cap) * 1000) / 1000)


def choose_flag_band(probs: np.ndarray, labels: np.ndarray, threshold: float,
                     max_flag_share: float = 0.15, other_flags: np.ndarray | None = None) -> dict:
    """Lower edge of the near-threshold band: catch the missed pneumonias, flag <= max share of NORMAL calls.

    `other_flags` marks films flagged for other reasons: the band and they together stay within the share.
    """
    other = np.zeros(len(probs), bool) if other_flags is None else np.asarray(other_flags, bool)
    normal_calls = probs < threshold
    missed = probs[normal_calls & (labels == 1)]
    budget = int(np.floor(max_flag_share * normal_calls.sum())) - int((other & normal_calls).sum())
    # Widen the band one NORMAL call at a time (highest first) while the budget allows.
    band_candidates = np.sort(probs[normal_calls & ~other])[::-1]
    band_low = threshold
    if budget > 0 and len(band_candidates):
        # Round up at 4 decimals: probabilities here sit near 0.01, where 3 decimals move the share a lot.
        band_low = float(np.ceil(band_candidates[min(budget, len(band_candidates)) - 1] * 1e4) / 1e4)
    if len(missed) and missed.min() > band_low:
        band_low = float(np.floor(missed.min() * 1e4) / 1e4)  # a narrower band already catches every miss
    flagged = normal_calls & ((probs >= band_low) | other)
    return {
        "flag_band_low": band_low,
        "fn_flagged_share": float(flagged[labels == 1].sum() / max(len(missed), 1)) if len(missed) else None,
        "normal_calls_flagged_share": float(flagged.sum() / max(normal_calls.sum(), 1)),
        "n_false_negatives": int(len(missed)),
        "n_normal_calls": int(normal_calls.sum()),
    }
