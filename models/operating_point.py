"""A site's operating point: the call threshold and the review band, chosen on its own labelled films.

The miss we guard against is a pneumonia film called NORMAL that no flag sends to a person. A film
below the threshold is flagged `near_threshold` when its probability is at or above the band's low
end; other flags (uncertain, crop failed, low quality, out of scope) do not depend on the band. So
the miss rate is a monotone function of the band's low end alone, and conformal risk control
(Angelopoulos et al., "Conformal Risk Control", 2022) picks the highest low end whose expected miss
rate on a new film from the same site stays at or below the target:

    (n * observed_miss_rate(low) + 1) / (n + 1) <= target,   n = pneumonia films in the sample.

The threshold itself is the one that maximises Youden's J (sensitivity + specificity - 1) on the
same sample; the band sits below it. Clopper–Pearson gives an exact upper bound on the miss rate.
"""
import io
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MISS_RATE = 0.02
CONFIDENCE = 0.95


@dataclass(frozen=True)
class OperatingPoint:
    """Where NORMAL ends (`threshold`) and where the near-threshold review band starts (`band_low`)."""

    threshold: float
    band_low: float

    def __post_init__(self):
        if not 0.0 <= self.band_low <= self.threshold <= 1.0:
            raise ValueError(f"need 0 <= band_low <= threshold <= 1, got {self.band_low}, {self.threshold}")


@dataclass(frozen=True)
class Choice:
    """A chosen operating point with what the local sample says about it."""

    point: OperatingPoint
    miss_rate_target: float
    n_normal: int
    n_pneumonia: int
    sensitivity: float        # pneumonia films called PNEUMONIA
    specificity: float        # normal films called NORMAL
    missed: int               # pneumonia films called NORMAL with no flag
    miss_rate: float          # missed / n_pneumonia
    miss_rate_upper: float    # Clopper–Pearson upper bound (CONFIDENCE) on the miss rate
    review_load: float        # share of NORMAL calls flagged for review


def min_pneumonia_films(miss_rate: float) -> int:
    """Below this many pneumonia films, conformal risk control cannot promise `miss_rate` at all."""
    return math.ceil(1.0 / miss_rate) - 1


def choose(probs: np.ndarray, labels: np.ndarray, flagged_at: Callable[[float], np.ndarray],
           miss_rate: float = DEFAULT_MISS_RATE) -> Choice:
    """The operating point for a labelled sample (labels 1 = pneumonia).

    `flagged_at(threshold)[i]` is True when film i, called NORMAL at that threshold, is flagged for a
    reason other than the band (a person reads it whatever the band; `uncertain` depends on the
    threshold). Raises ValueError when the sample cannot support the target.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    if not 0.0 < miss_rate < 1.0:
        raise ValueError(f"the miss rate must be between 0 and 1, got {miss_rate}")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    needed = min_pneumonia_films(miss_rate)
    if n_pos < needed or n_neg == 0:
        raise ValueError(
            f"the sample has {n_pos} pneumonia and {n_neg} normal films: a miss rate of {miss_rate:g} needs at "
            f"least {needed} pneumonia films (and some normal ones) before anything can be said")
    threshold = _youden_threshold(probs, labels)
    flagged_otherwise = np.asarray(flagged_at(threshold), bool)
    band_low = _conformal_band_low(probs[labels], flagged_otherwise[labels], threshold, miss_rate)
    return describe(OperatingPoint(threshold, band_low), probs, labels, flagged_otherwise, miss_rate)


def describe(point: OperatingPoint, probs: np.ndarray, labels: np.ndarray, flagged_otherwise: np.ndarray,
             miss_rate: float) -> Choice:
    """What the sample says about `point`."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    called = probs >= point.threshold
    reviewed = ~called & ((probs >= point.band_low) | flagged_otherwise)
    missed = int((labels & ~called & ~reviewed).sum())
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    normal_calls = int((~called).sum())
    return Choice(point=point, miss_rate_target=miss_rate, n_normal=n_neg, n_pneumonia=n_pos,
                  sensitivity=float((called & labels).sum() / n_pos),
                  specificity=float((~called & ~labels).sum() / n_neg), missed=missed,
                  miss_rate=missed / n_pos, miss_rate_upper=clopper_pearson_upper(missed, n_pos),
                  review_load=float(reviewed.sum() / normal_calls) if normal_calls else 0.0)


def _youden_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The probability cut with the highest sensitivity + specificity; ties go to the lower cut."""
    candidates = np.unique(probs)
    best, best_j = float(candidates[0]), -1.0
    for cut in candidates:
        called = probs >= cut
        j = (called & labels).sum() / labels.sum() + (~called & ~labels).sum() / (~labels).sum() - 1
        if j > best_j + 1e-12:
            best, best_j = float(cut), j
    return best


def _conformal_band_low(pos_probs: np.ndarray, pos_flagged: np.ndarray, threshold: float, target: float) -> float:
    """The highest band start whose conformal miss-rate bound stays within `target` (at most the threshold)."""
    n = len(pos_probs)
    # Misses as the band start rises: a pneumonia film is missed when it is below the band and unflagged.
    exposed = np.sort(pos_probs[(pos_probs < threshold) & ~pos_flagged])
    allowed = math.floor(target * (n + 1) - 1 + 1e-9)  # misses the bound tolerates
    if allowed >= len(exposed):
        return threshold  # calls and other flags alone keep the misses within the target
    # With the band starting at or below the (allowed+1)-th lowest exposed film, at most `allowed` are missed.
    return float(exposed[allowed])


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Exact one-sided upper bound on a binomial rate after k events in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    low, high = k / n, 1.0
    for _ in range(100):  # bisection on P(X <= k | p) = alpha; the CDF falls as p rises
        mid = (low + high) / 2
        if _binomial_cdf(k, n, mid) > alpha:
            low = mid
        else:
            high = mid
    return high


def clopper_pearson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided interval for a binomial rate after k events in n trials."""
    if n <= 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    upper = clopper_pearson_upper(k, n, 1.0 - tail)
    if k == 0:
        return 0.0, upper
    # The lower end: the rate at which k or more events have chance `tail`, i.e. P(X <= k-1) = 1 - tail.
    low, high = 0.0, k / n
    for _ in range(100):
        mid = (low + high) / 2
        if _binomial_cdf(k - 1, n, mid) > 1.0 - tail:
            low = mid
        else:
            high = mid
    return low, upper


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0 if k < n else 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)


def roc_png(probs: np.ndarray, labels: np.ndarray, point: OperatingPoint, title: str, side: int = 480) -> bytes:
    """The ROC curve of the sample with the chosen threshold marked, as a PNG a person can read."""
    from PIL import Image, ImageDraw

    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    cuts = np.r_[np.inf, np.unique(probs)[::-1], -np.inf]
    tpr = np.array([(probs[labels] >= cut).mean() for cut in cuts])
    fpr = np.array([(probs[~labels] >= cut).mean() for cut in cuts])
    margin, image = 56, Image.new("RGB", (side, side), "white")
    draw, plot = ImageDraw.Draw(image), side - 2 * margin

    def xy(x: float, y: float) -> tuple[float, float]:
        return margin + x * plot, side - margin - y * plot

    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(190, 190, 190), width=1)
    for tick in (0.0, 0.5, 1.0):
        draw.text((xy(tick, 0)[0] - 8, side - margin + 6), f"{tick:.1f}", fill="black")
        draw.text((margin - 30, xy(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
    draw.line([xy(x, y) for x, y in zip(fpr, tpr)], fill=(31, 90, 170), width=3)
    x, y = (probs[~labels] >= point.threshold).mean(), (probs[labels] >= point.threshold).mean()
    cx, cy = xy(x, y)
    draw.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], outline=(200, 40, 40), width=3)
    draw.text((cx + 10, cy + 4), f"threshold {point.threshold:.3f}", fill=(200, 40, 40))
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    draw.text((margin, 18), f"{title}; AUC {auc:.3f}", fill="black")
    draw.text((side / 2 - 70, side - 22), "1 - specificity (false positive rate)", fill="black")
    draw.text((6, margin - 22), "sensitivity", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
