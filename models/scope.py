"""Out-of-scope gate: is this a pediatric frontal chest film like the training ones? (pixels only)

Two signals, each scaled so that 1.0 is its limit, fitted on the training crops:
- feature distance: Mahalanobis distance of the classifier's pooled features to the nearer class
  mean (probabilistic PCA: top components plus an isotropic residual);
- image statistics: robust z-scores of a few film, crop and lung-mask statistics (brightness,
  contrast, mask area and confidence, lungs darker than their surround, texture, saturation),
  each over its own limit; the largest counts.
- learned: a logistic regression over the same pooled features and statistics, fitted against real
  out-of-scope films (adult frontal chests from many hospitals, laterals, other body parts; see
  training/gate.py), as exp(logit - limit): the odds of "out of scope" over the odds at its limit.
The score is the largest of the three; a film scoring >= 1 is flagged FlagReason.OUT_OF_SCOPE
(models/flags.py). Gates saved before the learned part have none (its score reads 0).
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)
_TINY = 1e-9

STATS = ("film_mean", "film_std", "crop_mean", "crop_std", "mask_area", "mask_confidence",
         "lung_contrast", "texture", "saturated")
COMPONENTS = 64
# Lungs filling the frame is how an adult film shows (adult chest films are collimated to the thorax;
# the 1-5-year-olds' films here include neck, arms and abdomen): mask_area gets a tighter limit.
STAT_QUANTILES = {"mask_area": 0.995}


def image_stats(films: np.ndarray, masks: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """(N, len(STATS)) statistics of films and masks at the mask's size, and raw crops."""
    lungs = masks > 0.5
    dx = np.abs(np.diff(films, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(films, axis=1)).mean(axis=(1, 2))
    inside = (films * lungs).sum(axis=(1, 2)) / np.maximum(lungs.sum(axis=(1, 2)), 1)
    outside = (films * ~lungs).sum(axis=(1, 2)) / np.maximum((~lungs).sum(axis=(1, 2)), 1)
    return np.stack([
        films.mean(axis=(1, 2)), films.std(axis=(1, 2)), crops.mean(axis=(1, 2)), crops.std(axis=(1, 2)),
        lungs.mean(axis=(1, 2)), np.abs(2 * masks - 1).mean(axis=(1, 2)), outside - inside, dx + dy,
        (crops >= 0.98).mean(axis=(1, 2)),
    ], axis=1).astype(np.float32)


@dataclass
class ScopeModel:
    """Fitted gate parameters, saved as scope.npz beside the weights (~380 KB)."""

    means: np.ndarray        # (2, D) class means of the pooled features
    components: np.ndarray   # (D, K) top principal directions of the within-class covariance
    variances: np.ndarray    # (K,) their variances
    residual: float          # variance per dimension outside the top K
    feature_limit: float     # distance scaled to 1.0
    stat_center: np.ndarray  # (S,) medians of STATS
    stat_scale: np.ndarray   # (S,) robust standard deviations of STATS
    stat_limit: np.ndarray   # (S,) |z| of each statistic scaled to 1.0
    gate_weights: np.ndarray | None = None  # (D + S,) learned logistic weights on [features, stats]
    gate_bias: float = 0.0
    gate_limit: float = 0.0  # logit at which the learned score is 1.0

    def statistic_scores(self, features: np.ndarray, stats: np.ndarray) -> dict[str, np.ndarray]:
        """Feature-distance and image-statistic scores, and the larger of the two."""
        feature = feature_distance(self, features) / self.feature_limit
        # A statistic that never varied where the gate was fitted has a zero scale or limit: any change in it
        # must count as far out, never as NaN (which no comparison flags).
        z = np.abs(stats - self.stat_center) / np.maximum(self.stat_scale, _TINY)
        stat = (z / np.maximum(self.stat_limit, _TINY)).max(axis=1)
        return {"feature": feature, "stats": stat, "score": np.maximum(feature, stat)}

    def learned_logit(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Log-odds of "out of scope" from the learned gate; -inf without one."""
        if self.gate_weights is None:
            return np.full(len(features), -np.inf)
        inputs = np.hstack([features, stats]).astype(np.float64)
        if inputs.shape[1] != len(self.gate_weights):
            raise ValueError(f"the learned gate expects {len(self.gate_weights)} features + statistics, got "
                             f"{inputs.shape[1]}: scope.npz was fitted on another ensemble (rerun "
                             "`python -m training --recalibrate`)")
        return inputs @ self.gate_weights + self.gate_bias

    def scores(self, features: np.ndarray, stats: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image feature, statistics and learned scores and the combined scope score (the largest)."""
        scores = self.statistic_scores(features, stats)
        learned = np.exp(np.clip(self.learned_logit(features, stats) - self.gate_limit, -50, 50))
        return {**scores, "learned": learned, "score": np.maximum(scores["score"], learned)}

    def save(self, path: Path) -> None:
        """Write the parameters to an .npz file."""
        np.savez_compressed(path, **{k: np.asarray(v, np.float32) for k, v in self.__dict__.items()
                                     if v is not None})

    @classmethod
    def load(cls, path: Path) -> "ScopeModel":
        """Read parameters written by save()."""
        with np.load(path) as data:
            values = {k: data[k] for k in data.files}
        return cls(**{k: (float(v) if v.ndim == 0 else v) for k, v in values.items()})


def feature_distance(model: ScopeModel, features: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearer class mean under the PPCA covariance."""
    best = None
    for mean in model.means:
        centered = features.astype(np.float64) - mean
        proj = centered @ model.components
        residual = (centered ** 2).sum(axis=1) - (proj ** 2).sum(axis=1)
        distance = (proj ** 2 / model.variances).sum(axis=1) + np.maximum(residual, 0) / model.residual
        best = distance if best is None else np.minimum(best, distance)
    return best


def fit_scope(features: np.ndarray, labels: np.ndarray, stats: np.ndarray, quantile: float = 0.995,
              stat_quantile: float = 0.999, components: int = COMPONENTS) -> ScopeModel:
    """Fit the gate on in-scope (training) films; limits are quantiles of each score there.

    Each statistic gets its own limit (its `stat_quantile` of |z|, or its STAT_QUANTILES entry): a
    heavy-tailed one must not set the limit of the others (an adult film shows as lungs filling the
    frame, not as odd brightness).
    """
    features = features.astype(np.float64)
    means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
    centered = features - means[labels]
    eigvals, eigvecs = np.linalg.eigh(np.cov(centered, rowvar=False))
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = np.maximum(eigvals[order], 1e-8), eigvecs[:, order]
    k = min(components, len(eigvals) - 1)
    residual = float(max(eigvals[k:].mean(), 1e-8))
    center = np.median(stats, axis=0)
    q75, q25 = np.percentile(stats, [75, 25], axis=0)
    robust, std = (q75 - q25) / 1.349, stats.std(axis=0)
    # Near-constant statistics (e.g. the saturated share, mostly 0) fall back to the plain std.
    scale = np.maximum(np.where(robust > 0.1 * std, robust, std), 1e-4)
    model = ScopeModel(means, eigvecs[:, :k], eigvals[:k], residual, 1.0, center, scale, 1.0)
    raw = model.scores(features, stats)
    model.feature_limit = float(np.quantile(raw["feature"], quantile))
    z = np.abs((stats - center) / scale)
    model.stat_limit = np.array([np.quantile(z[:, i], STAT_QUANTILES.get(name, stat_quantile))
                                 for i, name in enumerate(STATS)])
    logger.info("scope gate fitted on %d films: feature limit %.1f, statistic limits %s", len(features),
                model.feature_limit, np.round(model.stat_limit, 2))
    return model
