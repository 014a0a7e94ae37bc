"""The inference bundle the service uses: lung crop, classifier, calibrated probability and flags."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.calibration import sigmoid
from models.crop import CROP_FAILED, crop_batch, equalize, mask_to_box, squash
from models.segmenter import compiled, predict_masks

logger = logging.getLogger(__name__)

NEAR_THRESHOLD = "near_threshold"
CHUNK = 64
MIN_SIDE = 32
FILES = ("segmenter.keras", "segmenter.json", "classifier.keras", "classifier.json")


@dataclass
class Finding:
    """One film's screening result."""

    probability: float
    prediction: str
    threshold: float
    flagged: bool
    flag_reason: str | None
    crop_box: tuple[float, float, float, float]
    crop: np.ndarray


class Screener:
    """Segmenter + classifier with their metadata; screens batches of decoded films."""

    def __init__(self, segmenter, classifier, segmenter_meta: dict, classifier_meta: dict):
        self.segmenter_meta, self.classifier_meta = segmenter_meta, classifier_meta
        self.name: str = classifier_meta["name"]
        self.version: str = classifier_meta["version"]
        self.threshold: float = float(classifier_meta["threshold"])
        self.flag_band_low: float = float(classifier_meta["flag_band_low"])
        self.temperature: float = float(classifier_meta.get("temperature", 1.0))
        self.seg_size = int(segmenter.input_shape[1])
        self.input_size = int(classifier.input_shape[1])
        self._segment = compiled(segmenter)
        self._classify = compiled(classifier)

    @classmethod
    def load(cls, weights_dir: Path) -> "Screener":
        """Load segmenter.keras/.json and classifier.keras/.json from weights_dir."""
        weights_dir = Path(weights_dir)
        missing = [name for name in FILES if not (weights_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"model weights missing in {weights_dir}: {', '.join(missing)} "
                "(train them with `pneumoscreen train-segmenter` and `pneumoscreen train`)")
        import keras

        segmenter = keras.models.load_model(weights_dir / "segmenter.keras", compile=False)
        classifier = keras.models.load_model(weights_dir / "classifier.keras", compile=False)
        screener = cls(segmenter, classifier,
                       json.loads((weights_dir / "segmenter.json").read_text()),
                       json.loads((weights_dir / "classifier.json").read_text()))
        logger.info("loaded %s %s (threshold %.3f) from %s", screener.name, screener.version,
                    screener.threshold, weights_dir)
        return screener

    def screen(self, images: list[np.ndarray]) -> list[Finding]:
        """Screen decode_image() outputs of any size; models run once per chunk of CHUNK films."""
        # Check every image before any work, so a bad one fails the call fast and names itself.
        checked = [_checked(i, image) for i, image in enumerate(images)]
        findings: list[Finding] = []
        for start in range(0, len(checked), CHUNK):
            findings += self._screen_batch(np.stack([squash(image) for image in checked[start:start + CHUNK]]))
        return findings

    def _screen_batch(self, films: np.ndarray) -> list[Finding]:
        masks = predict_masks(self._segment, films, self.seg_size, batch_size=len(films))
        boxes = [mask_to_box(mask) for mask in masks]
        crops = crop_batch(films, boxes, self.input_size)
        logits = self._classify(equalize(crops)[..., None]).numpy()[:, 0]
        probs = sigmoid(logits / self.temperature)
        return [self._finding(float(p), box.box, box.failure, crop) for p, box, crop in zip(probs, boxes, crops)]

    def _finding(self, prob: float, box, failure: str | None, crop: np.ndarray) -> Finding:
        pneumonia = prob >= self.threshold
        reasons = []
        # Flags ask a person to look at a NORMAL call; a PNEUMONIA call is reviewed anyway.
        if not pneumonia and failure == CROP_FAILED:
            reasons.append(CROP_FAILED)
        if not pneumonia and prob >= self.flag_band_low:
            reasons.append(NEAR_THRESHOLD)
        return Finding(probability=prob, prediction="PNEUMONIA" if pneumonia else "NORMAL",
                       threshold=self.threshold, flagged=bool(reasons),
                       flag_reason=",".join(reasons) or None, crop_box=box, crop=crop)


def _checked(index: int, image) -> np.ndarray:
    """The image as float32, or ValueError saying what is wrong with it."""
    where = f"image {index}"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array from decode_image(), got {type(image).__name__}")
    if image.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D grayscale array from decode_image(), got shape {image.shape}")
    if min(image.shape) < MIN_SIDE:
        raise ValueError(f"{where}: {image.shape[1]}x{image.shape[0]} px is too small (min {MIN_SIDE} px a side)")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{where}: expected float values in [0, 1] (decode_image output), got dtype "
                         f"{image.dtype}; scale integer pixels to [0, 1] first")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError(f"{where}: contains NaN or infinite values")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise ValueError(f"{where}: values span [{image.min():.3g}, {image.max():.3g}], expected [0, 1]")
    return np.clip(image, 0.0, 1.0)
