"""Images/s of Screener.screen on one batch versus one image per call (a ratio, no asserts).

`screen` is the whole model path: segmentation, crop, every ensemble member with Grad-CAM (one
gradient tape per batch and member), MC-dropout spread, out-of-scope gate and flags. The heatmap PNG encoding the worker
adds per study is timed separately.

Usage: python bench/screen_speed.py [WEIGHTS_DIR] [DATA_DIR] [--count 256]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.heatmap import heatmap_png  # noqa: E402
from models.imaging import decode_image  # noqa: E402
from models.screener import Screener  # noqa: E402


def rate(screener: Screener, images: list[np.ndarray], batched: bool) -> float:
    """Images per second for one pass (after a warm-up call)."""
    screener.screen(images[:2])
    started = time.perf_counter()
    if batched:
        screener.screen(images)
    else:
        for image in images:
            screener.screen([image])
    return len(images) / (time.perf_counter() - started)


def baseline_rate(screener: Screener, images: list[np.ndarray], weights: Path) -> float:
    """Images/s of the bare model path (segment, crop, every member; no heatmap, gate or flags), batched."""
    import keras

    from models.crop import crop_batch, equalize, mask_to_box, squash
    from models.screener import member_files
    from models.segmenter import compiled, predict_masks

    members = [compiled(keras.models.load_model(weights / name, compile=False))
               for name in member_files(screener.classifier_meta)]

    def run(batch: list[np.ndarray]) -> None:
        for start in range(0, len(batch), 64):
            films = np.stack([squash(image) for image in batch[start:start + 64]])
            boxes = [mask_to_box(m) for m in predict_masks(screener._segment, films, screener.seg_size, len(films))]
            crops = equalize(crop_batch(films, boxes, screener.input_size))[..., None]
            for classify in members:
                classify(crops).numpy()

    run(images[:2])
    started = time.perf_counter()
    run(images)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    """Print batched and per-image throughput and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, nargs="?", default=ROOT / "models" / "weights")
    parser.add_argument("data", type=Path, nargs="?", default=ROOT.parent / "shared" / "data" / "kermany-train")
    parser.add_argument("--count", type=int, default=256)
    args = parser.parse_args()
    paths = sorted(args.data.glob("*/*.jpeg"))
    paths = [paths[i] for i in np.random.default_rng(0).choice(len(paths), args.count, replace=False)]
    started = time.perf_counter()
    images = [decode_image(p.read_bytes()) for p in paths]
    decode_rate = len(images) / (time.perf_counter() - started)
    screener = Screener.load(args.weights)
    bare = baseline_rate(screener, images, args.weights)
    batched = rate(screener, images, batched=True)
    single = rate(screener, images, batched=False)
    findings = screener.screen(images)
    started = time.perf_counter()
    for image, finding in zip(images, findings):
        heatmap_png(finding.heatmap, finding.crop_box, image.shape)
    png_rate = len(images) / (time.perf_counter() - started)
    print(f"{len(images)} images: decode {decode_rate:.0f} img/s; screen batched {batched:.1f} img/s, "
          f"per-image {single:.1f} img/s, ratio {batched / single:.1f}x; heatmap PNG {png_rate:.0f} img/s; "
          f"bare segment+crop+classify {bare:.1f} img/s")


if __name__ == "__main__":
    main()
