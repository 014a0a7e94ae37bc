"""The inference bundle the service uses: lung crop, classifier, calibrated probability and flags."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.calibration import Calibration
from models.crop import CROP_FAILED, crop_batch, equalize, mask_to_box, resize_batch, squash
from models.flags import FlagPolicy, flag_reasons
from models.inference import analyse_crops
from models.scope import STATS, ScopeModel, image_stats
from models.segmenter import compiled, predict_masks

logger = logging.getLogger(__name__)

CHUNK = 64
MIN_SIDE = 32
FILES = ("segmenter.keras", "segmenter.json", "classifier.json", "scope.npz")


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
    # Grad-CAM in [0, 1] over the lung crop (crop resolution, crop coordinates); see models/heatmap.py.
    heatmap: np.ndarray | None = None
    details: dict | None = None


class Screener:
    """Segmenter + classifier ensemble with their metadata; screens batches of decoded films."""

    def __init__(self, segmenter, classifiers: list, segmenter_meta: dict, classifier_meta: dict,
                 scope: ScopeModel | None = None):
        self.segmenter_meta, self.classifier_meta = segmenter_meta, classifier_meta
        self.name: str = classifier_meta["name"]
        self.version: str = classifier_meta["version"]
        self.threshold: float = float(classifier_meta["threshold"])
        self.calibration = Calibration.from_meta(classifier_meta)
        self.seg_size = int(segmenter.input_shape[1])
        self.input_size = int(classifiers[0].input_shape[1])
        self.policy = FlagPolicy.from_meta(classifier_meta)
        self.scope = scope
        self._segment = compiled(segmenter)
        self._analyse = analyse_crops(classifiers)

    @classmethod
    def load(cls, weights_dir: Path, with_scope: bool = True) -> "Screener":
        """Load segmenter/classifier .keras + .json and the scope gate (scope.npz) from weights_dir."""
        weights_dir = Path(weights_dir)
        needed = FILES if with_scope else FILES[:-1]
        missing = [name for name in needed if not (weights_dir / name).is_file()]
        if "classifier.json" not in missing:
            classifier_meta = json.loads((weights_dir / "classifier.json").read_text())
            members = member_files(classifier_meta)
            missing += [name for name in members if not (weights_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"model weights missing in {weights_dir}: {', '.join(missing)} "
                "(train them with `pneumoscreen train-segmenter` and `pneumoscreen train`; "
                "scope.npz comes from `python -m models.train --recalibrate`)")
        import keras

        segmenter = keras.models.load_model(weights_dir / "segmenter.keras", compile=False)
        classifiers = [keras.models.load_model(weights_dir / name, compile=False) for name in members]
        screener = cls(segmenter, classifiers, json.loads((weights_dir / "segmenter.json").read_text()),
                       classifier_meta, ScopeModel.load(weights_dir / "scope.npz") if with_scope else None)
        logger.info("loaded %s %s (%d member(s), threshold %.3f) from %s", screener.name, screener.version,
                    len(classifiers), screener.threshold, weights_dir)
        return screener

    def screen(self, images: list[np.ndarray]) -> list[Finding]:
        """Screen decode_image() outputs of any size; models run once per chunk of CHUNK films."""
        # Check every image before any work, so a bad one fails the call fast and names itself.
        checked = [_checked(i, image) for i, image in enumerate(images)]
        findings: list[Finding] = []
        for start in range(0, len(checked), CHUNK):
            out = self.run(np.stack([squash(image) for image in checked[start:start + CHUNK]]))
            findings += [self._finding(out, i) for i in range(len(out["probability"]))]
        return findings

    def run(self, films: np.ndarray) -> dict[str, np.ndarray]:
        """All per-film outputs for a (N, 224, 224) squashed batch, as arrays (calibration uses this too)."""
        small = resize_batch(films, self.seg_size)
        masks = predict_masks(self._segment, small, self.seg_size, batch_size=len(films))
        boxes = [mask_to_box(mask) for mask in masks]
        crops = crop_batch(films, boxes, self.input_size)
        out = self._analyse(equalize(crops), self.calibration)
        out.update(boxes=boxes, crops=crops, stats=image_stats(small, masks, crops),
                   crop_failed=np.array([b.failure == CROP_FAILED for b in boxes]))
        if self.scope is not None:
            out["scope"] = self.scope.scores(out["features"], out["stats"])
        return out

    def _finding(self, out: dict, i: int) -> Finding:
        prob = float(out["probability"][i])
        scope = {k: round(float(v[i]), 4) for k, v in out["scope"].items()} if "scope" in out else None
        reasons = flag_reasons(self.policy, prob, self.threshold, float(out["mc_high"][i]),
                               bool(out["crop_failed"][i]), out["stats"][i], scope)
        details = {"scope": scope, "mc_high": round(float(out["mc_high"][i]), 4),
                   "member_spread": round(float(out["member_spread"][i]), 4),
                   "mc_spread": round(float(out["mc_spread"][i]), 4),
                   "crop_contrast": round(float(out["stats"][i][STATS.index("crop_std")]), 4),
                   "crop_saturated": round(float(out["stats"][i][STATS.index("saturated")]), 4),
                   "heatmap": "Grad-CAM on the last conv block, lung-crop coordinates (crop_box on the film)"}
        box = out["boxes"][i].box
        return Finding(probability=prob, prediction="PNEUMONIA" if prob >= self.threshold else "NORMAL",
                       threshold=self.threshold, flagged=bool(reasons), flag_reason=",".join(reasons) or None,
                       crop_box=box, crop=out["crops"][i], heatmap=out["heatmap"][i], details=details)


def member_files(classifier_meta: dict) -> list[str]:
    """The ensemble's weight files, as classifier.json lists them."""
    return [member["file"] for member in classifier_meta["members"]]


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
