"""Re-derive calibration, threshold, flag policy and the scope gate for trained weights, from data.

`python -m training --recalibrate --data DIR --out WEIGHTS` runs the serving path
(`Screener.run`) over every training film, then rewrites classifier.json's calibration, threshold,
flag policy and validation figures and writes scope.npz; the .keras weights are not touched.
The learned part of the gate (training/gate.py) is fitted against the real out-of-scope films in
`<data>/../scope` when that folder is there, and skipped with a warning when it is not.
"""
import datetime as dt
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from models.calibration import Calibration, choose_flag_band, choose_threshold
from models.flags import FlagPolicy, flag_reasons
from models.scope import STATS, fit_scope
from models.screener import BatchOutput, Screener
from training.data import list_images, load_films, patient_split
from training.evaluate import binary_metrics
from training.gate import (DRESSINGS, GUARD_SHARE, HOLDOUT_SEED, HOLDOUT_SHARE, L2, MAX_VAL_FLAG_SHARE,
                           SYNTHETIC_FILMS, fit_gate, gate_material)

logger = logging.getLogger(__name__)

TARGET_SENSITIVITY = 0.99
MAX_FLAG_SHARE = 0.15
QUALITY_QUANTILE = 0.005
CHUNK = 256


def perturb(name: str, films: np.ndarray) -> np.ndarray:
    """A copy of the squashed films under one shift-simulating perturbation."""
    rng = np.random.default_rng(0)
    if name == "gamma_0.7":
        return films ** 0.7
    if name == "gamma_1.4":
        return films ** 1.4
    if name == "contrast_0.7":
        means = films.mean(axis=(1, 2), keepdims=True)
        return np.clip(means + 0.7 * (films - means), 0, 1)
    if name == "noise_0.03":
        return np.clip(films + rng.normal(0, 0.03, films.shape), 0, 1).astype(np.float32)
    size = films.shape[1]
    out = []
    for film in films:
        image = Image.fromarray(film.astype(np.float32), mode="F")
        if name == "blur_1.5":
            image = Image.fromarray((film * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
            out.append(np.asarray(image, np.float32) / 255)
        else:  # "resize_96": resolution loss
            out.append(np.asarray(image.resize((96, 96), Image.Resampling.BILINEAR).resize((size, size))))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


PERTURBATIONS = ("gamma_0.7", "gamma_1.4", "contrast_0.7", "blur_1.5", "noise_0.03", "resize_96")


def run_all(screener: Screener, films: np.ndarray) -> BatchOutput:
    """Screener.run over a large batch in chunks, without crops and heatmaps."""
    return BatchOutput.concat([screener.run(films[i:i + CHUNK]).without_images()
                               for i in range(0, len(films), CHUNK)])


def policy_shares(screener: Screener, policy: FlagPolicy, out: BatchOutput, labels: np.ndarray, threshold: float,
                  calibrate: Calibration) -> dict:
    """Share of false negatives flagged and of NORMAL calls flagged, overall and by reason."""
    # The gate is fitted after `out` was computed, so its scores are not in it; mc_high is a quantile of
    # probabilities, so it must come from a run under `calibrate` itself.
    probs = calibrate(out.logit)
    if not np.allclose(out.probability, probs, atol=1e-6):
        raise ValueError("outputs computed under another calibration: their mc_high is stale; run the films "
                         "again with screener.calibration set to the one scoring them")
    scores = screener.scope.scores(out.features, out.stats)["score"] if screener.scope else None
    reasons = [flag_reasons(policy, probs[i], threshold, out.mc_high[i], bool(out.crop_failed[i]), out.stats[i],
                            None if scores is None else {"score": scores[i]}) for i in range(len(probs))]
    normal_calls, missed = probs < threshold, (probs < threshold) & (labels == 1)
    flagged = np.array([bool(r) for r in reasons])
    by_reason = {}
    for reason in sorted({r for rs in reasons for r in rs}):
        has = np.array([reason in rs for rs in reasons])
        by_reason[reason.value] = {
            "normal_calls": round(float(has[normal_calls].mean()), 4) if normal_calls.any() else None,
            "false_negatives": int(has[missed].sum())}
    return {"flagged": flagged, "n_false_negatives": int(missed.sum()), "fn_flagged": int(flagged[missed].sum()),
            "fn_flagged_share": round(float(flagged[missed].mean()), 4) if missed.any() else None,
            "n_normal_calls": int(normal_calls.sum()),
            "normal_calls_flagged_share": round(float(flagged[normal_calls].mean()), 4) if normal_calls.any() else None,
            "by_reason": by_reason}


def robustness(screener: Screener, films: np.ndarray, labels: np.ndarray, calibrate: Calibration,
               thresholds: list[float]) -> dict:
    """Validation AUC and sensitivity/specificity at each threshold, clean and under each perturbation."""
    table = {}
    for name in ("clean", *PERTURBATIONS):
        logits = run_all(screener, films if name == "clean" else perturb(name, films)).logit
        probs = calibrate(logits)
        table[name] = {"auc": binary_metrics(probs, labels, 0.5)["auc"], "at": {
            f"{t:g}": {k: m[k] for k in ("sensitivity", "specificity", "accuracy")}
            for t in thresholds for m in [binary_metrics(probs, labels, t)]}}
        logger.info("robustness %s: %s", name, table[name])
    return table


def recalibrate(data_dir: Path, weights_dir: Path, command: str, scope_dir: Path | None = None) -> dict:
    """Refit calibration, threshold, flag policy and scope gate; rewrite classifier.json, write scope.npz.

    scope_dir holds the out-of-scope films for the learned gate (default: `<data_dir>/../scope`).
    """
    started = time.monotonic()
    weights_dir = Path(weights_dir)
    screener = Screener.load(weights_dir, with_scope=False)
    paths, labels = list_images(Path(data_dir))
    films = load_films(paths)
    train, val = patient_split(paths, labels)
    out = run_all(screener, films)
    logger.info("recalibrate: %d films through the serving path in %.0fs", len(films), time.monotonic() - started)

    y_val = labels[val]
    train_out = out.take(train)
    calibration = Calibration.fit(out.take(val).logit, y_val)
    # mc_high (the `uncertain` flag's input) is a quantile of probabilities under the calibration the
    # screener ran with, which is classifier.json's old one: run the validation films again under the new.
    screener.calibration = calibration
    val_out = run_all(screener, films[val])
    probs = val_out.probability
    threshold = choose_threshold(probs, y_val, TARGET_SENSITIVITY)
    scope_dir = Path(scope_dir) if scope_dir else Path(data_dir).parent / "scope"
    learned = None
    if (scope_dir / "manifest.csv").is_file():
        rows = gate_material(screener, films, out.features, out.stats, train, val, scope_dir)
        scope, report = fit_gate(rows, train, val, labels, len(STATS))
        fit_films = len(rows["scope_groups"]) - int(round(len(rows["scope_groups"]) * HOLDOUT_SHARE))
        learned = {"fitted_on": f"{len(train)} training-split films and one dressed copy of each, against "
                                f"{fit_films} films of {scope_dir.name}/ (70% of each group, seed {HOLDOUT_SEED}) "
                                f"and one dressed copy of each, and {3 * SYNTHETIC_FILMS} training films inverted "
                                "or rotated 90/180 degrees",
                   "dressings": list(DRESSINGS), "l2": L2,
                   "limit": round(scope.gate_limit, 4),
                   "guard_rule": "statistics gate fitted on training films and their dressed copies, its limits "
                                 f"scaled by guard_factor so it flags <= {GUARD_SHARE:.1%} of validation films, "
                                 "undressed and under every dressing, pooled",
                   "limit_rule": f"lowest learned limit keeping the whole gate's flags on <= {MAX_VAL_FLAG_SHARE:.1%} "
                                 "of those pooled validation films",
                   **report}
        del rows
    else:
        logger.warning("no out-of-scope films at %s (manifest.csv): the learned gate is skipped, scope.npz "
                       "holds the statistics gate only", scope_dir)
        scope = fit_scope(train_out.features, labels[train], train_out.stats)
    scope.save(weights_dir / "scope.npz")
    screener.scope = scope
    stats = train_out.stats
    policy = {"min_contrast": round(float(np.quantile(stats[:, STATS.index("crop_std")], QUALITY_QUANTILE)), 4),
              "max_saturated": round(float(np.quantile(stats[:, STATS.index("saturated")], 1 - QUALITY_QUANTILE)), 4),
              "uncertain": True}
    # The band takes what the other flags leave of the NORMAL-call budget.
    other = policy_shares(screener, FlagPolicy(threshold, **policy), val_out, y_val, threshold, calibration)
    band = choose_flag_band(probs, y_val, threshold, MAX_FLAG_SHARE, other.pop("flagged"))
    shares = policy_shares(screener, FlagPolicy(band["flag_band_low"], **policy), val_out, y_val, threshold,
                           calibration)
    shares.pop("flagged")
    val_scope = scope.scores(val_out.features, val_out.stats)["score"]

    meta_path = weights_dir / "classifier.json"
    meta = json.loads(meta_path.read_text())
    meta.update({
        "threshold": threshold, "flag_band_low": band["flag_band_low"], "calibration": calibration.to_meta(),
        "threshold_rule": f"highest threshold with validation sensitivity >= {TARGET_SENSITIVITY}, capped at 0.5",
        "flag_band_rule": f"lowest band edge (4 decimals) keeping all flags together on <= {MAX_FLAG_SHARE:.0%} "
                          "of validation NORMAL calls",
        "flag_policy": policy,
        "flag_policy_rule": "uncertain: 90th percentile of the probabilities over every ensemble member x "
                            "32 MC-dropout masks >= threshold; "
                            f"low_quality: crop contrast below / saturated share above the {QUALITY_QUANTILE:.1%} "
                            "tails of the training crops",
        "scope": {"file": "scope.npz", "fitted_on": f"{len(train)} training-split films"
                  + (" and one dressed copy of each" if learned else ""),
                  "rule": "score = max(feature distance / its 99.5th, each statistic |z| / its 99.9th training "
                          "percentile (mask area: 99.5th), both times learned.guard_factor when the learned part "
                          "is fitted; learned odds / odds at its limit); out_of_scope when >= 1",
                  "val_false_flag_share": round(float((val_scope >= 1).mean()), 4),
                  "learned": learned},
        "validation": {**binary_metrics(probs, y_val, threshold), "at_0.5": binary_metrics(probs, y_val, 0.5),
                       "flags": shares},
        "recalibrated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "recalibrate_command": command,
    })
    meta.pop("temperature", None)  # bundles before Platt scaling
    thresholds = sorted({threshold, 0.1, 0.2, 0.3, 0.5})
    meta["robustness"] = robustness(screener, films[val], y_val, calibration, thresholds)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("recalibrated in %.0fs: %s", time.monotonic() - started, {k: meta[k] for k in ("threshold", "validation")})
    return meta
