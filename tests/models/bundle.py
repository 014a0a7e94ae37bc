"""Test material: a tiny untrained model bundle (pipeline tests run without shipped weights) and non-chest images."""
import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np

from models.scope import STATS, ScopeModel
from training.classifier import build_classifier
from training.segmenter import build_unet

logger = logging.getLogger(__name__)


def build_tiny_bundle(out_dir: Path, seed: int = 0) -> Path:
    """Save an untrained tiny segmenter + classifier (.keras + .json) and scope.npz into out_dir."""
    import keras

    keras.utils.set_random_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    build_unet(64, widths=(4, 8), bottleneck=8).save(out_dir / "segmenter.keras")
    # Two members, so every test through the tiny bundle runs the ensemble path.
    build_classifier(64, stem=4, widths=(8, 16)).save(out_dir / "classifier.keras")
    build_classifier(64, stem=4, widths=(8, 16)).save(out_dir / "classifier-1.keras")
    # A gate that never fires: untrained features mean nothing; the shipped gate is tested on its own.
    dims, stats = 2 * 16, len(STATS)  # two members of 16 pooled features each
    ScopeModel(np.zeros((2, dims)), np.eye(dims)[:, :4], np.ones(4), 1.0, 1e9, np.zeros(stats), np.ones(stats),
               1e9).save(out_dir / "scope.npz")
    (out_dir / "segmenter.json").write_text(json.dumps({
        "name": "tiny-unet", "version": "0.0.0+tiny", "input_size": 64, "val_dice": None,
        "val_iou": None, "trained_at": now}, indent=2))
    (out_dir / "classifier.json").write_text(json.dumps({
        # Untrained outputs sit near 0.5: NORMAL calls inside the flag band, exercising both flag reasons.
        "name": "tiny-cnn", "version": "0.0.0+tiny", "input_size": 64, "threshold": 0.6,
        "flag_band_low": 0.4, "calibration": {"method": "platt", "scale": 1.0, "bias": 0.0},
        "validation": {}, "trained_at": now,
        "members": [{"file": "classifier.keras", "version": "0.0.0+tiny0"},
                    {"file": "classifier-1.keras", "version": "0.0.0+tiny1"}],
        "command": "tests.models.bundle.build_tiny_bundle"}, indent=2))
    logger.info("tiny bundle saved to %s", out_dir)
    return out_dir


def synthetic_non_chest(seed: int = 0, size: int = 256) -> dict[str, np.ndarray]:
    """Non-chest images in [0, 1]: noise, gradients, text-like marks, shapes and smooth 'photo' fields."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    text = Image.new("L", (size, size), 235)
    draw = ImageDraw.Draw(text)
    for row in range(8, size - 12, 14):
        draw.text((8, row), "".join(rng.choice(list("abcdefghij klmnop QRSTUV 0123456789"), 40)), fill=20)
    shapes = Image.new("L", (size, size), int(rng.integers(0, 255)))
    draw = ImageDraw.Draw(shapes)
    for _ in range(12):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(20, size // 2, 2)
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=int(rng.integers(0, 255)))
    # A natural-photo-like field: 1/f^2 spectrum (smooth blobs at every scale), plus a bright "sky".
    spectrum = np.fft.fft2(rng.normal(size=(size, size))) / np.maximum(np.hypot(*np.meshgrid(
        np.fft.fftfreq(size), np.fft.fftfreq(size))), 1 / size) ** 1.0
    field = np.real(np.fft.ifft2(spectrum))
    field = (field - field.min()) / (field.max() - field.min())
    photo = np.clip(0.7 * field + 0.3 * (yy < -0.3), 0, 1)
    images = {
        "uniform_noise": rng.random((size, size)),
        "gaussian_noise": np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1),
        "horizontal_gradient": np.tile(ramp, (size, 1)),
        "vertical_gradient": np.tile(ramp[:, None], (1, size)),
        "radial_gradient": np.clip(1 - np.hypot(xx, yy) / 1.4, 0, 1),
        "checkerboard": ((xx * 4).astype(int) + (yy * 4).astype(int)) % 2 * 1.0,
        "text_page": np.asarray(text, np.float32) / 255,
        "shapes": np.asarray(shapes, np.float32) / 255,
        "photo_like": photo,
    }
    return {name: np.asarray(image, np.float32) for name, image in images.items()}


def blank_images(size: int = 256) -> dict[str, np.ndarray]:
    """Uniform black, mid-grey and white images."""
    return {f"blank_{v:g}": np.full((size, size), v, np.float32) for v in (0.0, 0.5, 1.0)}


def film_variants(film: np.ndarray) -> dict[str, np.ndarray]:
    """A real film inverted and rotated by 90 and 180 degrees."""
    return {"inverted": 1.0 - film, "rotated_90": np.ascontiguousarray(np.rot90(film)),
            "rotated_180": np.ascontiguousarray(np.rot90(film, 2))}
