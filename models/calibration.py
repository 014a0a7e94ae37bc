"""Platt scaling, the screening threshold and the near-threshold flag band, fitted on validation."""
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


@dataclass(frozen=True)
class Calibration:
    """Platt scaling: probability = sigmoid(scale * logit + bias), fitted on validation logits.

    The bias undoes the shift class weights put on the logit; the scale undoes over-confidence.
    """

    scale: float = 1.0
    bias: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(self.scale * np.asarray(logits, np.float64) + self.bias)

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> "Calibration":
        """Scale and bias minimising the log-loss (Newton's method on a two-parameter logistic fit)."""
        x = np.stack([np.asarray(logits, np.float64), np.ones(len(logits))], axis=1)
        y = np.asarray(labels, np.float64)
        w = np.array([1.0, 0.0])
        loss = log_loss(sigmoid(x @ w), y)
        for _ in range(100):
            p = sigmoid(x @ w)
            hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
            step = np.linalg.solve(hessian, x.T @ (p - y))
            # Halve the Newton step until the loss goes down (saturated logits make full steps overshoot).
            step_loss = log_loss(sigmoid(x @ (w - step)), y)
            while step_loss > loss and np.abs(step).max() > 1e-12:
                step /= 2
                step_loss = log_loss(sigmoid(x @ (w - step)), y)
            w, loss = w - step, step_loss
            if np.abs(step).max() < 1e-9:
                break
        fitted = cls(round(float(w[0]), 4), round(float(w[1]), 4))
        logger.info("Platt calibration scale %.4f bias %.4f: log-loss %.4f -> %.4f", fitted.scale, fitted.bias,
                    log_loss(sigmoid(x[:, 0]), y), log_loss(fitted(x[:, 0]), y))
        return fitted

    @classmethod
    def from_meta(cls, meta: dict) -> "Calibration":
        """The calibration recorded in classifier.json."""
        return cls(float(meta["calibration"]["scale"]), float(meta["calibration"]["bias"]))

    def to_meta(self) -> dict:
        return {"method": "platt", "scale": self.scale, "bias": self.bias}


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


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
