"""Measure the out-of-scope gate of the shipped bundle per group; writes bench/results/scope_eval.json.

Run: .venv/bin/python bench/scope_eval.py --data ../shared/data
Every group is held out from the learned gate's fit: pediatric validation films (by patient; the gate's
limit was set on them, with other dressing draws than here), each "dressing" of them, the 30% of each
scope/ group the gate never saw (training/gate.py `scope_split`), and the adult DICOMs as decoded, min-max
and percentile-stretched. kermany-fullsize is training-split patients (their 224 px copies were fitted
on). "statistics gate" is the shipped gate's guard part alone (feature distance + image statistics, with
its widened limits), "learned" its logistic part alone; "whole gate" is what serving flags. For the
gate before the learned part, run this with --weights on a copy of the bundle holding the old scope.npz.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.crop import squash  # noqa: E402
from models.dicom import read_dataset  # noqa: E402
from models.imaging import decode_image  # noqa: E402
from models.screener import BatchOutput, Screener  # noqa: E402
from tests.models.bundle import blank_images, film_variants, synthetic_non_chest  # noqa: E402
from training.data import list_images, load_films, patient_split  # noqa: E402
from training.gate import DRESSINGS, dress_films, list_scope, scope_split  # noqa: E402

logger = logging.getLogger("scope_eval")
CHUNK = 256


def run_all(screener: Screener, films: np.ndarray) -> BatchOutput:
    """Screener.run in chunks, without images."""
    return BatchOutput.concat([screener.run(films[i:i + CHUNK]).without_images() for i in range(0, len(films), CHUNK)])


def summarize(screener: Screener, out: BatchOutput) -> dict:
    """Counts flagged by the statistics gate, the learned part and the whole gate; PNEUMONIA calls passed."""
    scope = out.scope
    before = np.maximum(scope["feature"], scope["stats"]) >= 1
    after = scope["score"] >= 1
    pneumonia = out.probability >= screener.threshold
    learned = scope.get("learned", np.zeros(len(out)))
    return {"n": len(out), "statistics_gate": int(before.sum()), "learned": int((learned >= 1).sum()),
            "whole_gate": int(after.sum()), "share_before": round(float(before.mean()), 4),
            "share_after": round(float(after.mean()), 4),
            "unflagged_pneumonia_calls": int((pneumonia & ~after).sum()),
            "score_quartiles": [round(float(q), 3) for q in np.quantile(scope["score"], [0.25, 0.5, 0.75])]}


def dicom_renderings(path: Path) -> dict[str, np.ndarray]:
    """A DICOM film as decode_image serves it, and min-max / 0.5-99.5 percentile stretches of its values."""
    from pydicom.pixels import apply_modality_lut

    ds = read_dataset(path.read_bytes())
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        values = values.max() - values
    out = {"as decoded": decode_image(path.read_bytes())}
    for name, (low, high) in {"min-max": (values.min(), values.max()),
                              "percentile": tuple(np.percentile(values, (0.5, 99.5)))}.items():
        out[name] = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    return out


def main() -> None:
    """Screen each group and write the summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    parser.add_argument("--variants", type=int, default=200, help="validation films to invert/rotate")
    parser.add_argument("--seed", type=int, default=100, help="dressing draws (recalibration used 10-18)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scope_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    screener = Screener.load(args.weights)
    paths, labels = list_images(args.data / "kermany-train")
    _, val = patient_split(paths, labels)
    films = load_films([paths[i] for i in val])
    groups: dict[str, np.ndarray] = {}
    val_out = run_all(screener, films)
    groups["pediatric val NORMAL"] = val_out.take(np.nonzero(labels[val] == 0)[0])
    groups["pediatric val PNEUMONIA"] = val_out.take(np.nonzero(labels[val] == 1)[0])
    for k, name in enumerate(DRESSINGS):
        groups[f"pediatric val, {name}"] = run_all(screener, dress_films(films, [name] * len(films), args.seed + k))
    full, full_labels = list_images(args.data / "kermany-fullsize")
    full_out = run_all(screener, np.stack([squash(decode_image(p.read_bytes())) for p in full]))
    groups["kermany-fullsize NORMAL (train patients)"] = full_out.take(np.nonzero(full_labels == 0)[0])
    groups["kermany-fullsize PNEUMONIA (train patients)"] = full_out.take(np.nonzero(full_labels == 1)[0])
    scope_paths, scope_groups = list_scope(args.data / "scope")
    _, held = scope_split(scope_groups)
    for group in ("adult-frontal", "lateral", "other-body-part"):
        picks = held[scope_groups[held] == group]
        groups[f"held-out {group}"] = run_all(screener, load_films([scope_paths[i] for i in picks]))
    per_image = {}
    for path in sorted((args.data / "dicom").glob("*.dcm")):
        for kind, image in dicom_renderings(path).items():
            out = screener.run(squash(image)[None])
            groups[f"DICOM {path.name}, {kind}"] = out
            per_image[f"dicom:{path.name}:{kind}"] = {k: round(float(v[0]), 3) for k, v in out.scope.items()}
    synthetic = [image for seed in (0, 1) for image in synthetic_non_chest(seed).values()]
    groups["synthetic non-chest"] = screener.run(np.stack([squash(i.astype(np.float32)) for i in synthetic]))
    groups["blank"] = screener.run(np.stack([squash(i.astype(np.float32)) for i in blank_images().values()]))
    picks = np.random.default_rng(0).choice(len(films), args.variants, replace=False)
    variants = [film_variants(films[i]) for i in picks]
    for kind in ("inverted", "rotated_90", "rotated_180"):
        groups[f"{kind} validation films"] = run_all(screener, np.stack([squash(v[kind]) for v in variants]))
    result = {"model_version": screener.version, "groups": {k: summarize(screener, v) for k, v in groups.items()},
              "per_image": per_image}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| group | n | statistics gate alone | learned part alone | whole gate | unflagged PNEUMONIA calls |")
    print("|---|---|---|---|---|---|")
    for name, s in result["groups"].items():
        print(f"| {name} | {s['n']} | {s['statistics_gate']} ({s['share_before']:.1%}) | {s['learned']} | "
              f"**{s['whole_gate']} ({s['share_after']:.1%})** | {s['unflagged_pneumonia_calls']} |")


if __name__ == "__main__":
    main()
