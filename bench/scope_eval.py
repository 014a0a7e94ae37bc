"""Measure the out-of-scope gate of the shipped bundle; writes bench/results/scope_eval.json.

Run: .venv/bin/python bench/scope_eval.py --data ../shared/data
In-scope: the patient-level validation films (false-flag share, target <= 5%). Out of scope:
the adult DICOM films, synthetic non-chest images, blank images, and validation films inverted
and rotated by 90 / 180 degrees.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.imaging import decode_image  # noqa: E402
from models.reasons import FlagReason  # noqa: E402
from models.screener import Screener  # noqa: E402
from tests.models.bundle import blank_images, film_variants, synthetic_non_chest  # noqa: E402
from training.data import list_images, patient_split  # noqa: E402

logger = logging.getLogger("scope_eval")


def summarize(findings) -> dict:
    """Share flagged out_of_scope and the score quartiles of a group of findings."""
    scores = np.array([f.details["scope"]["score"] for f in findings])
    oos = np.array([FlagReason.OUT_OF_SCOPE in f.reasons for f in findings])
    normal_unflagged = np.array([f.prediction == "NORMAL" and not f.flagged for f in findings])
    return {"n": len(findings), "out_of_scope_share": round(float(oos.mean()), 4),
            "passed_as_unflagged_normal": int(normal_unflagged.sum()),
            "score_quartiles": [round(float(q), 3) for q in np.quantile(scores, [0.25, 0.5, 0.75])]}


def main() -> None:
    """Screen each group and write the summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    parser.add_argument("--variants", type=int, default=200, help="validation films to invert/rotate")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scope_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    screener = Screener.load(args.weights)
    paths, labels = list_images(args.data / "kermany-train")
    _, val = patient_split(paths, labels)
    val_films = [decode_image(paths[i].read_bytes()) for i in val]
    groups: dict[str, list] = {"validation (in scope)": screener.screen(val_films)}
    dicoms = sorted((args.data / "dicom").glob("*.dcm"))
    groups["adult DICOM films"] = screener.screen([decode_image(p.read_bytes()) for p in dicoms])
    synthetic = {f"{name}/{seed}": image for seed in (0, 1) for name, image in synthetic_non_chest(seed).items()}
    groups["synthetic non-chest"] = screener.screen(list(synthetic.values()))
    groups["blank"] = screener.screen(list(blank_images().values()))
    picks = np.random.default_rng(0).choice(len(val_films), args.variants, replace=False)
    variants = [film_variants(val_films[i]) for i in picks]
    for kind in ("inverted", "rotated_90", "rotated_180"):
        groups[f"{kind} validation films"] = screener.screen([v[kind] for v in variants])
    result = {"model_version": screener.version, "groups": {k: summarize(v) for k, v in groups.items()},
              "per_image": {
                  **{f"dicom:{p.name}": f.details["scope"] for p, f in zip(dicoms, groups["adult DICOM films"])},
                  **{f"synthetic:{k}": f.details["scope"] for k, f in zip(synthetic, groups["synthetic non-chest"])},
              }}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, summary in result["groups"].items():
        print(f"{name:32s} {summary}")


if __name__ == "__main__":
    main()
