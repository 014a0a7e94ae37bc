"""Does a threshold chosen on deliberately shifted validation films hold better on an unseen shift?

Run: .venv/bin/python bench/threshold_transfer.py --data ../shared/data
Leave-one-shift-out on the patient-level validation split (922 films): each perturbation of
training/recalibrate.py in turn plays the "new site"; the threshold is chosen without it by
(a) the shipped rule (validation sensitivity >= 0.99) on clean films, (b) the same rule on clean
films pooled with the other perturbations, (c) rule (a) on test-time-augmented scores (mean
ensemble logit over the crop as served and re-crops with the lung box 5% tighter and 5% looser).
Each is scored on the held-out perturbation, next to that perturbation's own best (oracle)
thresholds, and next to what `pneumoscreen calibrate` would do there (models/operating_point.py
`choose` on 200 random films of the site, scored on the other 722, 20 seeds). Scores are cached
in --cache, so a second run only redoes the analysis. Writes bench/results/threshold_transfer.json.
"""
import argparse
import json
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.calibration import choose_threshold  # noqa: E402
from models.crop import CropBox, crop_batch, equalize  # noqa: E402
from models.operating_point import DEFAULT_MISS_RATE, choose, describe  # noqa: E402
from models.screener import Screener, member_files  # noqa: E402
from training.data import list_images, load_films, patient_split  # noqa: E402
from training.evaluate import binary_metrics  # noqa: E402
from training.recalibrate import PERTURBATIONS, TARGET_SENSITIVITY, perturb, run_all  # noqa: E402

logger = logging.getLogger("threshold_transfer")
TTA_SCALES = (0.95, 1.05)  # lung-box size around its centre; 1.0 is the served crop
SITE_FILMS, SITE_SEEDS = 200, 20
KEEP = ("sensitivity", "specificity", "accuracy")


def member_forward(weights_dir: Path, meta: dict):
    """crops (N, S, S) equalized -> mean member logit; the plain forward, no Grad-CAM or dropout samples."""
    import keras
    import tensorflow as tf

    members = [keras.models.load_model(weights_dir / name, compile=False) for name in member_files(meta)]

    @tf.function(input_signature=[tf.TensorSpec((None, *members[0].input_shape[1:]), tf.float32)])
    def forward(x):
        return tf.reduce_mean(tf.stack([m(x, training=False)[:, 0] for m in members]), axis=0)

    return lambda crops: np.concatenate([forward(crops[i:i + 256, ..., None].astype(np.float32)).numpy()
                                         for i in range(0, len(crops), 256)]).astype(np.float64)


def scaled(box: CropBox, scale: float) -> CropBox:
    """The box grown (scale > 1) or shrunk around its centre, kept inside the film."""
    x0, y0, x1, y1 = box.box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, scale * (x1 - x0) / 2, scale * (y1 - y0) / 2
    return CropBox((max(cx - hw, 0.0), max(cy - hh, 0.0), min(cx + hw, 1.0), min(cy + hh, 1.0)), box.failure)


def score_copy(screener: Screener, forward, films: np.ndarray, name: str, cache: Path) -> dict:
    """The serving path's outputs for one copy of the films, plus the test-time-augmented logit (cached)."""
    path = cache / f"{screener.version}-{name}-{len(films)}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    started = time.monotonic()
    shifted = films if name == "clean" else perturb(name, films).astype(np.float32)
    out = run_all(screener, shifted)
    served = forward(equalize(crop_batch(shifted, out.boxes, screener.input_size)))
    views = [forward(equalize(crop_batch(shifted, [scaled(b, s) for b in out.boxes], screener.input_size)))
             for s in TTA_SCALES]
    scored = {"out": out, "tta_logit": np.mean([out.logit, *views], axis=0),
              "forward_gap": float(np.abs(served - out.logit).max()), "seconds": round(time.monotonic() - started)}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(scored))
    logger.info("%s: scored in %ds (plain forward vs serving logit: max gap %.1e)", name, scored["seconds"],
                scored["forward_gap"])
    return scored


def youden(probs: np.ndarray, labels: np.ndarray) -> float:
    """The cut with the highest sensitivity + specificity (ties to the lower cut), as `choose` picks it."""
    cuts = np.unique(probs)
    pos, neg = np.sort(probs[labels == 1]), np.sort(probs[labels == 0])
    j = (1 - np.searchsorted(pos, cuts) / len(pos)) + np.searchsorted(neg, cuts) / len(neg) - 1
    return float(cuts[int(np.argmax(j > j.max() - 1e-12))])


def at(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    return {"threshold": round(threshold, 4), **{k: binary_metrics(probs, labels, threshold)[k] for k in KEEP}}


def leave_one_out(probs: dict, tta: dict, y: np.ndarray) -> dict:
    """Per held-out perturbation: rules (a), (b), (c) chosen without it, and its own oracle thresholds."""
    rows = {}
    t_clean, t_tta = (choose_threshold(p["clean"], y, TARGET_SENSITIVITY) for p in (probs, tta))
    for held in PERTURBATIONS:
        pooled = ["clean", *(name for name in PERTURBATIONS if name != held)]
        t_pooled = choose_threshold(np.concatenate([probs[n] for n in pooled]), np.tile(y, len(pooled)),
                                    TARGET_SENSITIVITY)
        p = probs[held]
        rows[held] = {"a_clean": at(p, y, t_clean), "b_pooled": at(p, y, t_pooled), "c_tta": at(tta[held], y, t_tta),
                      "oracle_youden": at(p, y, youden(p, y)),
                      "oracle_sens_0.99": at(p, y, choose_threshold(p, y, TARGET_SENSITIVITY))}
    return rows


def pooled_candidate(probs: dict, y: np.ndarray) -> dict:
    """What rule (b) would ship: the threshold on clean and every perturbation pooled, scored on each copy."""
    threshold = choose_threshold(np.concatenate(list(probs.values())), np.tile(y, len(probs)), TARGET_SENSITIVITY)
    return {"threshold": threshold, "at": {name: at(p, y, threshold) for name, p in probs.items()}}


def site_calibration(screener: Screener, outs: dict, y: np.ndarray, fixed: dict) -> dict:
    """`choose` on SITE_FILMS random films of each copy, scored on the rest; fixed thresholds on the same rests."""
    rows = {}
    for name, out in outs.items():
        runs = []
        for seed in range(SITE_SEEDS):
            order = np.random.default_rng(seed).permutation(len(y))
            cal, rest = out.take(order[:SITE_FILMS]), out.take(order[SITE_FILMS:])
            choice = choose(cal.probability, y[order[:SITE_FILMS]], lambda t: screener.flagged_at(cal, t),
                            DEFAULT_MISS_RATE)
            y_rest = y[order[SITE_FILMS:]]
            local = describe(choice.point, rest.probability, y_rest,
                             screener.flagged_at(rest, choice.point.threshold), DEFAULT_MISS_RATE)
            shipped = describe(screener.point, rest.probability, y_rest,
                               screener.flagged_at(rest, screener.point.threshold), DEFAULT_MISS_RATE)
            runs.append({"threshold": choice.point.threshold, "band_low": choice.point.band_low,
                         "sensitivity": local.sensitivity, "specificity": local.specificity,
                         "miss_rate": local.miss_rate, "review_load": local.review_load,
                         "shipped_miss_rate": shipped.miss_rate, "shipped_review_load": shipped.review_load,
                         **{f"{rule}_{k}": binary_metrics(rest.probability, y_rest, t)[k]
                            for rule, t in fixed.get(name, {}).items() for k in ("sensitivity", "specificity")}})
        rows[name] = {k: {"mean": round(float(np.mean([r[k] for r in runs])), 4),
                          "p5": round(float(np.percentile([r[k] for r in runs], 5)), 4),
                          "p95": round(float(np.percentile([r[k] for r in runs], 95)), 4)} for k in runs[0]}
    return rows


def summary(rows: dict, site: dict) -> dict:
    """Mean and minimum over the held-out perturbations, per rule."""
    table = {}
    for rule in next(iter(rows.values())):
        table[rule] = {f"{s}_{k}": round(float(f([rows[p][rule][k] for p in rows])), 4)
                       for k in KEEP for s, f in (("mean", np.mean), ("min", np.min))}
    table["site_calibration"] = {f"{s}_{k}": round(float(f([site[p][k]["mean"] for p in rows])), 4)
                                 for k in ("sensitivity", "specificity")
                                 for s, f in (("mean", np.mean), ("min", np.min))}
    table["site_calibration"].update({f"min_p5_{k}": min(site[p][k]["p5"] for p in rows)
                                      for k in ("sensitivity", "specificity")})
    return table


def main() -> None:
    """Score the copies (or read them from the cache), print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pneumoscreen-threshold-transfer"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "threshold_transfer.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.monotonic()
    screener = Screener.load(args.weights)
    paths, labels = list_images(args.data / "kermany-train")
    _, val = patient_split(paths, labels)
    y = labels[val]
    films = load_films([paths[i] for i in val])
    forward = member_forward(args.weights, screener.classifier_meta)
    scored = {name: score_copy(screener, forward, films, name, args.cache) for name in ("clean", *PERTURBATIONS)}
    outs = {name: s["out"] for name, s in scored.items()}
    probs = {name: out.probability for name, out in outs.items()}
    tta = {name: screener.calibration(s["tta_logit"]) for name, s in scored.items()}
    rows = leave_one_out(probs, tta, y)
    fixed = {p: {"a": r["a_clean"]["threshold"], "b": r["b_pooled"]["threshold"]} for p, r in rows.items()}
    site = site_calibration(screener, outs, y, fixed)
    table = summary(rows, site)
    candidate = pooled_candidate(probs, y)

    print(f"{'held out':<14}" + "".join(f"{rule:>24}" for rule in next(iter(rows.values()))))
    for p, r in rows.items():
        print(f"{p:<14}" + "".join(f"{m['threshold']:>8.3f} {m['sensitivity']:.3f}/{m['specificity']:.3f}"
                                   for m in r.values()))
    print(f"\n{'rule':<18}{'mean sens':>10}{'min sens':>10}{'mean spec':>10}{'min spec':>10}")
    for rule, m in table.items():
        print(f"{rule:<18}{m['mean_sensitivity']:>10.3f}{m['min_sensitivity']:>10.3f}"
              f"{m['mean_specificity']:>10.3f}{m['min_specificity']:>10.3f}")
    print(f"\n{'site calibration':<14}{'thr':>7}{'sens':>7}{'p5':>7}{'spec':>7}{'p5':>7}{'miss':>7}{'load':>7}")
    for p, s in site.items():
        print(f"{p:<14}{s['threshold']['mean']:>7.3f}{s['sensitivity']['mean']:>7.3f}{s['sensitivity']['p5']:>7.3f}"
              f"{s['specificity']['mean']:>7.3f}{s['specificity']['p5']:>7.3f}{s['miss_rate']['mean']:>7.3f}"
              f"{s['review_load']['mean']:>7.3f}")
    print(f"\nrule (b) on every copy pooled: threshold {candidate['threshold']:.3f}; "
          + ", ".join(f"{n} {m['sensitivity']:.3f}/{m['specificity']:.3f}" for n, m in candidate["at"].items()))
    wall = round(time.monotonic() - started)
    result = {
        "command": "python bench/threshold_transfer.py --data ../shared/data",
        "wall_s": wall, "note_wall": "wall_s is this run; scoring_s is each copy's first, uncached scoring",
        "model_version": screener.version, "shipped_threshold": screener.threshold,
        "shipped_band_low": screener.point.band_low, "n_films": int(len(y)), "n_pneumonia": int(y.sum()),
        "perturbations": list(PERTURBATIONS), "target_sensitivity": TARGET_SENSITIVITY,
        "tta": f"mean ensemble logit over the served crop and re-crops with the lung box scaled {TTA_SCALES}",
        "tta_forward_gap": max(s["forward_gap"] for s in scored.values()),
        "site_calibration_setup": f"choose() on {SITE_FILMS} random films of the copy (flagged_at: "
                                  f"Screener.flagged_at), scored on the other {len(y) - SITE_FILMS}, "
                                  f"{SITE_SEEDS} seeds; miss rate target {DEFAULT_MISS_RATE}",
        "auc": {name: binary_metrics(p, y, 0.5)["auc"] for name, p in probs.items()},
        "auc_tta": {name: binary_metrics(p, y, 0.5)["auc"] for name, p in tta.items()},
        "scoring_s": {name: s.get("seconds") for name, s in scored.items()},
        "leave_one_out": rows, "site_calibration": site, "summary": table, "pooled_candidate": candidate}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s in %ds", args.out, wall)


if __name__ == "__main__":
    main()
