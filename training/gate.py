"""The learned out-of-scope gate: pediatric films against real out-of-scope films (`<data>/../scope`).

A logistic regression over what serving already computes (the ensemble's pooled features and the gate's
image statistics), fitted on the pediatric training split against 70% of each scope group (a fixed,
seeded share; the other 30% is held out) and against training films inverted or rotated. Both classes
are also seen "dressed" the way other sources present films (sizes and padding, low-quality JPEG,
borders, burnt-in text, gamma, DICOM-like renderings), so that the gate learns "adult / not a frontal
chest", not "not from Guangzhou".

The statistics gate (models/scope.py: feature distance + image statistics) stays as a guard for what
no real negative shows (blank, noise, synthetic images): it is fitted on training films and their
dressed copies, and its limits are widened until it flags at most GUARD_SHARE of the pediatric
validation films, dressed and undressed (unwidened it flagged 17-48% of padded, bordered and
DICOM-rendered children). The learned limit then takes the rest of the MAX_VAL_FLAG_SHARE budget.
"""
import csv
import io
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.crop import squash
from models.scope import ScopeModel, fit_scope
from training.data import load_films

logger = logging.getLogger(__name__)

SCOPE_GROUPS = ("adult-frontal", "lateral", "other-body-part")
HOLDOUT_SHARE = 0.3
HOLDOUT_SEED = 0
DRESSINGS = ("pad", "crop", "resize_jpeg", "border", "text", "gamma", "dicom_minmax", "dicom_window", "jpeg_224")
MAX_VAL_FLAG_SHARE = 0.025
GUARD_SHARE = 0.01
L2 = 10.0  # ridge on standardized inputs, against a class-balanced unit weight per film
SYNTHETIC_FILMS = 400  # training films inverted, rotated 90 and 180 degrees as extra negatives


def list_scope(scope_dir: Path) -> tuple[list[Path], np.ndarray]:
    """Films and their group names from scope/manifest.csv, in manifest order."""
    scope_dir = Path(scope_dir)
    with open(scope_dir / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["group"] in SCOPE_GROUPS]
    return [scope_dir / row["file"] for row in rows], np.array([row["group"] for row in rows])


def scope_split(groups: np.ndarray, share: float = HOLDOUT_SHARE,
                seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Fit/held-out indices: a fixed, seeded `share` of each group is held out (tests and bench use this)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), bool)
    for group in SCOPE_GROUPS:
        members = np.nonzero(groups == group)[0]
        held[rng.permutation(members)[: int(round(len(members) * share))]] = True
    return np.nonzero(~held)[0], np.nonzero(held)[0]


def dress(film: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """One film (2-D, [0, 1]) as another source might present it; any size, not squashed."""
    if name == "pad":  # letterboxing: black (rarely white) bars on two opposite sides
        side = int(film.shape[0] * rng.uniform(0.04, 0.15))
        value = 0.0 if rng.random() < 0.8 else 1.0
        pad = ((side, side), (0, 0)) if rng.random() < 0.5 else ((0, 0), (side, side))
        return np.pad(film, pad, constant_values=value)
    if name == "crop":  # a slightly tighter field of view, not symmetric
        h, w = film.shape
        top, bottom, left, right = (rng.uniform(0.0, 0.07, 4) * [h, h, w, w]).astype(int)
        return film[top:h - bottom, left:w - right]
    if name == "resize_jpeg":  # another size and aspect, re-compressed at low quality
        long = rng.integers(300, 1025)
        aspect = rng.uniform(0.75, 1.33)
        size = (int(long), int(long * aspect)) if aspect < 1 else (int(long / aspect), int(long))
        image = Image.fromarray(_u8(film)).resize(size, Image.Resampling.BILINEAR)
        return _jpeg(image, int(rng.integers(8, 35)))
    if name == "border":  # a frame of constant intensity
        width = int(rng.integers(2, 12))
        return np.pad(film, width, constant_values=float(rng.choice([0.0, 1.0, rng.uniform(0.2, 0.8)])))
    if name == "text":
        return _burn_text(film, rng)
    if name == "gamma":
        out = film ** rng.uniform(0.6, 1.6)
        mean = out.mean()
        return np.clip(mean + rng.uniform(0.7, 1.3) * (out - mean), 0, 1)
    if name == "jpeg_224":  # as the Kermany copies were made: squashed to 224 px, JPEG
        return _jpeg(Image.fromarray(_u8(squash(film.astype(np.float32)))), int(rng.integers(60, 96)))
    if name in ("dicom_minmax", "dicom_window"):
        return _dicom_like(film, rng, window=name == "dicom_window")
    raise ValueError(f"unknown dressing {name!r}; expected one of {DRESSINGS}")


def dress_films(films: np.ndarray, names: list[str], seed: int) -> np.ndarray:
    """Squashed (N, 224, 224) copies of squashed films, film i dressed with names[i]."""
    rng = np.random.default_rng(seed)
    return np.stack([squash(np.clip(dress(film, name, rng), 0, 1).astype(np.float32))
                     for film, name in zip(films, names)])


def _u8(film: np.ndarray) -> np.ndarray:
    return np.clip(film * 255 + 0.5, 0, 255).astype(np.uint8)


def _jpeg(image: Image.Image, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), np.float32) / 255


def _burn_text(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Side markers, dates and labels burnt into the corners, at a random scale."""
    scale = int(rng.choice([1, 2, 4]))
    image = Image.fromarray(_u8(film)).resize((film.shape[1] * scale, film.shape[0] * scale))
    draw = ImageDraw.Draw(image)
    w, h = image.size
    fill = int(rng.integers(200, 256))
    for _ in range(int(rng.integers(1, 4))):
        label = str(rng.choice(["L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT", "2019-03-14 10:22",
                                "ID 004512", "8 yr"]))
        font = ImageFont.load_default(size=float(h * rng.uniform(0.03, 0.08)))
        x = rng.uniform(0.02, 0.25) * w if rng.random() < 0.5 else rng.uniform(0.6, 0.85) * w
        y = rng.uniform(0.02, 0.12) * h if rng.random() < 0.5 else rng.uniform(0.82, 0.92) * h
        if rng.random() < 0.3:  # a marker box behind the letter
            box = h * rng.uniform(0.04, 0.08)
            draw.rectangle((x - 2, y - 2, x + box, y + box), outline=fill, width=max(1, scale))
        draw.text((x, y), label, fill=fill, font=font)
    return np.asarray(image, np.float32) / 255


def _dicom_like(film: np.ndarray, rng: np.random.Generator, window: bool) -> np.ndarray:
    """A raw-detector-like rendering: another tone curve, hot pixels and often an unexposed edge strip,
    stretched min-max (no window) or over its 0.5-99.5 percentiles (as decode_dicom does without one)."""
    raw = 1000 + 3000 * film ** rng.uniform(0.5, 2.0) + rng.normal(0, 15, film.shape)
    flat = raw.reshape(-1)
    hot = rng.choice(flat.size, max(1, flat.size // 1000), replace=False)
    flat[hot] = rng.choice([0.0, 4095.0 * 1.5], hot.size)
    if rng.random() < 0.6:
        width = int(film.shape[1] * rng.uniform(0.02, 0.08))
        raw[:, -width:] = rng.choice([raw.min(), raw.max()])
    low, high = np.percentile(raw, (0.5, 99.5)) if window else (raw.min(), raw.max())
    return np.clip((raw - low) / max(high - low, 1e-6), 0, 1)


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float = L2,
                 iterations: int = 25) -> tuple[np.ndarray, float]:
    """Weighted, L2-penalised logistic regression by Newton's method (bias not penalised)."""
    x1 = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    coef = np.zeros(x1.shape[1])
    penalty = np.full(x1.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x1 @ coef, -40, 40)))
        grad = x1.T @ (weight * (p - y)) + penalty * coef
        hess = (x1 * (weight * p * (1 - p))[:, None]).T @ x1 + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        coef -= step
        if np.abs(step).max() < 1e-6:
            break
    return coef[:-1], float(coef[-1])


def gate_inputs(features: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """What the learned gate reads: pooled features and image statistics side by side."""
    return np.hstack([features, stats]).astype(np.float64)


def fit_learned(scope: ScopeModel, inside: np.ndarray, outside: np.ndarray, l2: float = L2) -> ScopeModel:
    """Fit the logistic gate on gate_inputs() rows (pediatric `inside`, scope `outside`); limit left at 0."""
    x = np.vstack([inside, outside])
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    center, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    # Each class weighs as much as the other; weights sum to the number of films.
    weight = np.where(y == 1, len(x) / (2 * len(outside)), len(x) / (2 * len(inside)))
    coef, bias = fit_logistic((x - center) / scale, y, weight, l2)
    scope.gate_weights = (coef / scale).astype(np.float32)
    scope.gate_bias = float(bias - (coef / scale) @ center)
    scope.gate_limit = 0.0
    return scope


def choose_limit(scope: ScopeModel, features: list[np.ndarray], stats: list[np.ndarray],
                 max_share: float = MAX_VAL_FLAG_SHARE) -> float:
    """Lowest learned limit keeping the whole gate's flags on <= max_share of the pooled in-scope films."""
    old = np.concatenate([scope.statistic_scores(f, s)["score"] for f, s in zip(features, stats)])
    logit = np.concatenate([scope.learned_logit(f, s) for f, s in zip(features, stats)])
    budget = int(np.floor(max_share * len(old))) - int((old >= 1).sum())
    candidates = np.sort(logit[old < 1])[::-1]
    if budget < 0:
        logger.warning("the statistics gate alone flags %.1f%% of in-scope validation films (> %.1f%%)",
                       100 * (old >= 1).mean(), 100 * max_share)
        budget = 0
    if budget >= len(candidates):
        return float(candidates.min()) - 1.0
    # Midway between the last film flagged and the first passed (a film at the limit is flagged).
    above = candidates[budget - 1] if budget > 0 else candidates[0] + 2e-3
    return float((above + candidates[budget]) / 2)


def features_of(screener, films: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and image statistics of squashed films through the serving path."""
    parts = [screener.run(films[i:i + chunk]).without_images() for i in range(0, len(films), chunk)]
    return np.concatenate([p.features for p in parts]), np.concatenate([p.stats for p in parts])


def gate_material(screener, films: np.ndarray, features: np.ndarray, stats: np.ndarray, train: np.ndarray,
                  val: np.ndarray, scope_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Gate inputs of every group the learned gate is fitted, limited and reported on.

    `features`/`stats` are those of `films` (all pediatric films); train films get one random dressing
    each, validation films every dressing, scope films (fit part) one random dressing each.
    """
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    rows = {"ped": gate_inputs(features, stats)}
    names = [DRESSINGS[i] for i in rng.integers(0, len(DRESSINGS), len(train))]
    rows["ped_train_dressed"] = gate_inputs(*features_of(screener, dress_films(films[train], names, seed + 1)))
    for k, name in enumerate(DRESSINGS):
        dressed = dress_films(films[val], [name] * len(val), seed + 10 + k)
        rows[f"ped_val_{name}"] = gate_inputs(*features_of(screener, dressed))
    picks = rng.choice(train, min(SYNTHETIC_FILMS, len(train)), replace=False)
    turned = np.concatenate([1.0 - films[picks], np.rot90(films[picks], 1, axes=(1, 2)),
                             np.rot90(films[picks], 2, axes=(1, 2))])
    rows["ped_train_turned"] = gate_inputs(*features_of(screener, np.ascontiguousarray(turned)))
    logger.info("gate: pediatric films dressed and screened in %.0fs", time.monotonic() - started)
    paths, groups = list_scope(scope_dir)
    scope_films = load_films(paths)
    rows["scope"] = gate_inputs(*features_of(screener, scope_films))
    fit, _ = scope_split(groups)
    names = [DRESSINGS[i] for i in rng.integers(0, len(DRESSINGS), len(fit))]
    rows["scope_fit_dressed"] = gate_inputs(*features_of(screener, dress_films(scope_films[fit], names, seed + 2)))
    rows["scope_groups"] = groups
    logger.info("gate: %d scope films (and %d dressed) screened; %.0fs in all", len(paths), len(fit),
                time.monotonic() - started)
    return rows


def fit_gate(rows: dict[str, np.ndarray], train: np.ndarray, val: np.ndarray, labels: np.ndarray,
             stat_count: int, l2: float = L2, max_share: float = MAX_VAL_FLAG_SHARE,
             guard_share: float = GUARD_SHARE) -> tuple[ScopeModel, dict]:
    """The whole gate from gate_material() rows: guard, learned part, limits; and its per-group counts."""
    fit, held = scope_split(rows["scope_groups"])
    dims = rows["ped"].shape[1] - stat_count
    inside = np.vstack([rows["ped"][train], rows["ped_train_dressed"]])
    scope = fit_scope(inside[:, :dims], np.r_[labels[train], labels[train]], inside[:, dims:])
    pooled = [rows["ped"][val]] + [rows[f"ped_val_{name}"] for name in DRESSINGS]
    guard = widen_guard(scope, [x[:, :dims] for x in pooled], [x[:, dims:] for x in pooled], guard_share)
    outside = np.vstack([rows["scope"][fit], rows["scope_fit_dressed"], rows["ped_train_turned"]])
    fit_learned(scope, inside, outside, l2)
    scope.gate_limit = choose_limit(scope, [x[:, :dims] for x in pooled], [x[:, dims:] for x in pooled], max_share)
    groups = {"pediatric val NORMAL": rows["ped"][val][labels[val] == 0],
              "pediatric val PNEUMONIA": rows["ped"][val][labels[val] == 1],
              **{f"pediatric val dressed: {name}": rows[f"ped_val_{name}"] for name in DRESSINGS},
              **{f"held-out {group}": rows["scope"][held][rows["scope_groups"][held] == group]
                 for group in SCOPE_GROUPS}}
    report = {name: flag_counts(scope, x, dims) for name, x in groups.items()}
    logger.info("learned gate: guard factor %.3f, limit %.3f; %s", guard, scope.gate_limit, report)
    return scope, {"guard_factor": round(guard, 4), "groups": report}


def widen_guard(scope: ScopeModel, features: list[np.ndarray], stats: list[np.ndarray],
                share: float = GUARD_SHARE) -> float:
    """Scale the statistics gate's limits so it flags at most `share` of the pooled in-scope films."""
    old = np.concatenate([scope.statistic_scores(f, s)["score"] for f, s in zip(features, stats)])
    factor = max(1.0, float(np.quantile(old, 1 - share)) * 1.0001)
    scope.feature_limit *= factor
    scope.stat_limit = scope.stat_limit * factor
    return factor


def flag_counts(scope: ScopeModel, x: np.ndarray, dims: int) -> dict:
    """Films flagged by the whole gate, by the statistics gate alone and by the learned part alone."""
    scores = scope.scores(x[:, :dims], x[:, dims:])
    return {"n": len(x), "flagged": int((scores["score"] >= 1).sum()),
            "statistics_gate": int((np.maximum(scores["feature"], scores["stats"]) >= 1).sum()),
            "learned": int((scores["learned"] >= 1).sum())}
