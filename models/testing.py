"""A tiny untrained model bundle with valid metadata, so pipeline tests run without shipped weights."""
import datetime as dt
import json
import logging
from pathlib import Path

from models.classifier import build_classifier
from models.segmenter import build_unet

logger = logging.getLogger(__name__)


def build_tiny_bundle(out_dir: Path, seed: int = 0) -> Path:
    """Save an untrained tiny segmenter + classifier (.keras + .json) into out_dir and return it."""
    import keras

    keras.utils.set_random_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    build_unet(64, widths=(4, 8), bottleneck=8).save(out_dir / "segmenter.keras")
    build_classifier(64, stem=4, widths=(8, 16)).save(out_dir / "classifier.keras")
    (out_dir / "segmenter.json").write_text(json.dumps({
        "name": "tiny-unet", "version": "0.0.0+tiny", "input_size": 64, "val_dice": None,
        "val_iou": None, "trained_at": now}, indent=2))
    (out_dir / "classifier.json").write_text(json.dumps({
        # Untrained outputs sit near 0.5: NORMAL calls inside the flag band, exercising both flag reasons.
        "name": "tiny-cnn", "version": "0.0.0+tiny", "input_size": 64, "threshold": 0.6,
        "flag_band_low": 0.4, "temperature": 1.0, "validation": {}, "trained_at": now,
        "command": "models.testing.build_tiny_bundle"}, indent=2))
    logger.info("tiny bundle saved to %s", out_dir)
    return out_dir
