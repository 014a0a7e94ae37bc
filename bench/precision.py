"""float32 against bfloat16 (models/precision.py): speed of Screener.screen and how often the two agree.

Per folder of class sub-folders (NORMAL/PNEUMONIA, or scope's adult-frontal/lateral/other-body-part):
films/s of each (best of 3 passes), the share of films with the same call, the same flag decision, the same
reasons, the same out-of-scope decision, the largest and 99th-percentile |difference| in probability, the lung
boxes' IoU and, with NORMAL and PNEUMONIA, the AUC of each. No asserts: tests/models/test_precision.py checks.

Usage: python bench/precision.py [FOLDER ...] [--count 1000] [--weights models/weights]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.imaging import decode_image  # noqa: E402
from models.precision import BFLOAT16, FLOAT32  # noqa: E402
from models.reasons import FlagReason  # noqa: E402
from models.screener import Screener  # noqa: E402
from training.evaluate import roc_auc  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def films(folder: Path, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to `count` decoded films drawn at random (seed 1) and their sub-folder names."""
    paths = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if len(paths) > count:
        paths = [paths[i] for i in np.random.default_rng(1).choice(len(paths), count, replace=False)]
    return [decode_image(p.read_bytes()) for p in paths], np.array([p.parent.name for p in paths])


def box_iou(p: tuple, q: tuple) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width, height = min(p[2], q[2]) - max(p[0], q[0]), min(p[3], q[3]) - max(p[1], q[1])
    inter = max(0.0, width) * max(0.0, height)
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def best_rate(screener: Screener, images: list[np.ndarray]) -> float:
    screener.screen(images[:64])
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        screener.screen(images)
        passes.append(len(images) / (time.perf_counter() - started))
    return max(passes)


def compare(screeners: dict, images: list[np.ndarray], groups: np.ndarray) -> list[str]:
    """Report lines for one folder."""
    rates = {name: best_rate(screener, images) for name, screener in screeners.items()}
    (a, out_a), (b, out_b) = ((s.screen(images), s.outputs(images)) for s in screeners.values())
    lines = [f"  films/s: float32 {rates[FLOAT32]:.1f}, bfloat16 {rates[BFLOAT16]:.1f} "
             f"({rates[BFLOAT16] / rates[FLOAT32]:.2f}x)"]
    delta = np.abs(out_a.probability - out_b.probability)
    ious = np.array([box_iou(p.box, q.box) for p, q in zip(out_a.boxes, out_b.boxes)])
    lines.append(f"  |probability difference|: max {delta.max():.4f}, 99th percentile {np.quantile(delta, 0.99):.4f}; "
                 f"lung-box IoU median {np.median(ious):.3f}, 5th percentile {np.quantile(ious, 0.05):.3f}")
    for group in [None, *sorted(set(groups))]:
        idx = np.arange(len(groups)) if group is None else np.flatnonzero(groups == group)

        def same(of) -> str:
            return f"{np.mean([of(a[i]) == of(b[i]) for i in idx]):.4f}"
        lines.append(f"  {group or 'all'} ({len(idx)}): same call {same(lambda f: f.prediction)}, "
                     f"same flag {same(lambda f: bool(f.reasons))}, same reasons {same(lambda f: f.reasons)}, "
                     f"same out-of-scope {same(lambda f: FlagReason.OUT_OF_SCOPE in f.reasons)}")
    if set(groups) == {"NORMAL", "PNEUMONIA"}:
        truth = groups == "PNEUMONIA"
        lines.append(f"  AUC: float32 {roc_auc(out_a.probability, truth):.4f}, "
                     f"bfloat16 {roc_auc(out_b.probability, truth):.4f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="*",
                        default=[DATA / "kermany-train", DATA / "kermany-fullsize", DATA / "scope"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    args = parser.parse_args()
    screeners = {precision: Screener.load(args.weights, precision=precision) for precision in (FLOAT32, BFLOAT16)}
    for folder in args.folders:
        images, groups = films(folder, args.count)
        print(f"{folder.name}: {len(images)} films", flush=True)
        print("\n".join(compare(screeners, images, groups)), flush=True)


if __name__ == "__main__":
    main()
