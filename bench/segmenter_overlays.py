"""Overlay predicted lung masks and crop boxes on NORMAL training films, as one grid PNG for review.

Usage: python bench/segmenter_overlays.py WEIGHTS_DIR NORMAL_DIR OUT_PNG [--count 8]
"""
import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.crop import mask_to_box, resize_batch  # noqa: E402
from models.segmenter import compiled, predict_masks  # noqa: E402
from training.data import load_films  # noqa: E402

logger = logging.getLogger(__name__)
TILE = 192


def overlay(film: np.ndarray, mask: np.ndarray) -> Image.Image:
    """Film in gray, mask tinted red, crop box in green (yellow when it fell back)."""
    gray = resize_batch(film[None], TILE)[0]
    lungs = resize_batch(mask[None], TILE)[0] > 0.5
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[lungs] = rgb[lungs] * 0.6 + np.array([0.4, 0.0, 0.0])
    tile = Image.fromarray((rgb * 255).astype(np.uint8))
    crop = mask_to_box(mask)
    x0, y0, x1, y1 = (v * TILE for v in crop.box)
    ImageDraw.Draw(tile).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 0) if crop.failure else (0, 220, 0),
                                   width=2)
    return tile


def main() -> None:
    """Write the overlay grid."""
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("normals", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    paths = sorted(args.normals.glob("*.jpeg"))
    picks = [paths[i] for i in np.random.default_rng(1).choice(len(paths), args.count, replace=False)]
    films = load_films(picks)
    model = keras.models.load_model(args.weights / "segmenter.keras", compile=False)
    masks = predict_masks(compiled(model), films, model.input_shape[1])
    cols = 4
    grid = Image.new("RGB", (cols * TILE, -(-len(films) // cols) * TILE))
    for i, (film, mask) in enumerate(zip(films, masks)):
        grid.paste(overlay(film, mask), ((i % cols) * TILE, (i // cols) * TILE))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(colors=128).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB; files: {[p.name for p in picks]}")


if __name__ == "__main__":
    main()
