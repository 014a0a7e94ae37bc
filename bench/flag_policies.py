"""Review-flag policies compared at several thresholds on the validation films; writes JSON.

Run: .venv/bin/python bench/flag_policies.py --data ../shared/data
Six validation false negatives at the shipped threshold are too few to choose a policy by, so each
policy is also scored at higher thresholds, where more pneumonias fall below the line. Every policy
flags out_of_scope and lung_crop_failed films, then fills the same budget (15% of NORMAL calls)
from the top of its own score:
- shipped: `uncertain` (96-sample 90th percentile >= threshold), then the probability band;
- probability: the band alone;
- mc_high: ranked by the 96-sample 90th percentile;
- disagreement: ranked by the std of the members' probabilities.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.screener import Screener  # noqa: E402
from training.data import list_images, load_films, patient_split  # noqa: E402
from training.recalibrate import MAX_FLAG_SHARE, run_all  # noqa: E402

THRESHOLDS = (None, 0.4, 0.5, 0.6, 0.7, 0.8)  # None: the shipped threshold


def fill_budget(normal_calls: np.ndarray, score: np.ndarray, first: np.ndarray) -> np.ndarray:
    """`first` among the NORMAL calls, then the highest `score`s up to the flag budget."""
    flagged = first & normal_calls
    room = int(np.floor(MAX_FLAG_SHARE * normal_calls.sum())) - int(flagged.sum())
    if room > 0:
        ranked = np.sort(score[normal_calls & ~flagged])[::-1]
        flagged |= normal_calls & (score >= ranked[min(room, len(ranked)) - 1])
    return flagged


def main() -> None:
    """Print and save, per threshold, the false negatives each policy flags at the same load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flag_policies.json")
    args = parser.parse_args()
    screener = Screener.load(args.weights)
    paths, labels = list_images(args.data / "kermany-train")
    _, val = patient_split(paths, labels)
    y = labels[val]
    out = run_all(screener, load_films([paths[i] for i in val]))
    probs = screener.calibration(out.logit)
    other = out.crop_failed | (screener.scope.scores(out.features, out.stats)["score"] >= 1)
    rows = []
    for threshold in THRESHOLDS:
        t = threshold or screener.threshold
        normal_calls = probs < t
        missed = normal_calls & (y == 1)
        policies = {"shipped": fill_budget(normal_calls, probs, other | (out.mc_high >= t)),
                    "probability": fill_budget(normal_calls, probs, other),
                    "mc_high": fill_budget(normal_calls, out.mc_high, other),
                    "disagreement": fill_budget(normal_calls, out.member_spread, other)}
        row = {"threshold": round(t, 3), "false_negatives": int(missed.sum()),
               "normal_calls": int(normal_calls.sum()),
               "policies": {name: {"fn_flagged": int(f[missed].sum()),
                                   "normal_calls_flagged_share": round(float(f.sum() / normal_calls.sum()), 4)}
                            for name, f in policies.items()}}
        rows.append(row)
        print(row["threshold"], row["false_negatives"], {k: v["fn_flagged"] for k, v in row["policies"].items()})
    args.out.write_text(json.dumps({"model_version": screener.version, "budget": MAX_FLAG_SHARE,
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
