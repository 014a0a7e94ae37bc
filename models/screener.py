"""The inference bundle the service uses: lung crop, classifier, calibrated probability and flags."""
import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from models.calibration import Calibration
from models.crop import CROP_FAILED, CropBox, crop_batch, equalize, mask_to_box, resize_batch, squash
from models.flags import FlagPolicy, flag_reasons
from models.imaging import SCREEN_SIDE, ImageDecodeError, decode_image
from models.inference import ensemble_pass
from models.limits import MIN_SIDE
from models.operating_point import OperatingPoint
from models.precision import FLOAT32
from models.reasons import FlagReason
from models.scope import STATS, ScopeModel, image_stats
from models.segmenter import compiled, predict_masks

logger = logging.getLogger(__name__)

CHUNK = 64
FILES = ("segmenter.keras", "segmenter.json", "classifier.json", "scope.npz")


@dataclass
class Finding:
    """One film's screening result."""

    probability: float
    prediction: str
    threshold: float
    # Why a person should look at it, in FlagReason order; () for none.
    reasons: tuple[FlagReason, ...]
    crop_box: tuple[float, float, float, float]
    crop: np.ndarray
    # Grad-CAM in [0, 1] over the lung crop (crop resolution, crop coordinates); see models/heatmap.py.
    heatmap: np.ndarray | None = None
    details: dict | None = None

    @property
    def flagged(self) -> bool:
        """True when any reason asks for review."""
        return bool(self.reasons)


@dataclass(frozen=True)
class BatchOutput:
    """Every per-film output of Screener.run for N films: arrays (or a list, for boxes) of length N."""

    logit: np.ndarray          # (N,) ensemble logit (mean of the members')
    probability: np.ndarray    # (N,) calibrated probability
    features: np.ndarray       # (N, D) the members' pooled features side by side
    heatmap: np.ndarray | None  # (N, S, S) Grad-CAM over the crop; None after without_images()
    member_spread: np.ndarray  # (N,) std of the members' probabilities
    mc_high: np.ndarray        # (N,) high quantile over members x MC-dropout samples
    mc_spread: np.ndarray      # (N,) std over members x MC-dropout samples
    boxes: list[CropBox]
    crops: np.ndarray | None   # (N, S, S) raw lung crops; None after without_images()
    stats: np.ndarray          # (N, len(STATS)) image statistics
    crop_failed: np.ndarray    # (N,) bool: the crop fell back to the fixed box
    scope: dict[str, np.ndarray] | None = None  # ScopeModel.scores(); None without a gate

    def __len__(self) -> int:
        return len(self.probability)

    def without_images(self) -> "BatchOutput":
        """The same output without crops and heatmaps (~128 KB a film): for runs over thousands of films."""
        return replace(self, crops=None, heatmap=None)

    def take(self, index: np.ndarray) -> "BatchOutput":
        """The outputs of the films at `index`."""
        return BatchOutput(**{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    @classmethod
    def concat(cls, parts: list["BatchOutput"]) -> "BatchOutput":
        """One output for consecutive batches."""
        return cls(**{f.name: _concat([getattr(part, f.name) for part in parts]) for f in fields(cls)})


class Screener:
    """Segmenter + classifier ensemble with their metadata; screens batches of decoded films."""

    def __init__(self, segmenter, classifiers: list, segmenter_meta: dict, classifier_meta: dict,
                 scope: ScopeModel | None = None, precision: str = FLOAT32):
        self.segmenter_meta, self.classifier_meta = segmenter_meta, classifier_meta
        self.precision = precision  # what the models compute in (models/precision.py), recorded with each finding
        self.name: str = classifier_meta["name"]
        self.version: str = classifier_meta["version"]
        self.threshold: float = float(classifier_meta["threshold"])
        self.calibration = Calibration.from_meta(classifier_meta)
        self.seg_size = int(segmenter.input_shape[1])
        self.input_size = int(classifiers[0].input_shape[1])
        self.policy = FlagPolicy.from_meta(classifier_meta)
        # The shipped operating point; a department's own replaces it per film (screen's `points`).
        self.point = OperatingPoint(self.threshold, self.policy.band_low)
        self.scope = scope
        # One BLAS thread in any process that runs the models: after each NumPy matrix product its BLAS threads
        # spin for a while and take the cores from TensorFlow's next operation. On 2 cores the ensemble ran at
        # 178 films/s with them and 312 without (bench/run's b: 86 -> 127 films/s).
        threadpool_limits(1, user_api="blas")
        self._segment = compiled(segmenter, precision)
        self._ensemble = ensemble_pass(classifiers, precision)

    @classmethod
    def load(cls, weights_dir: Path, with_scope: bool = True, precision: str = FLOAT32) -> "Screener":
        """Load segmenter/classifier .keras + .json and the scope gate (scope.npz) from weights_dir; the models
        compute in `precision`, float32 or bfloat16 (models/precision.py)."""
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
                "scope.npz comes from `python -m training --recalibrate`)")
        import keras

        segmenter = keras.models.load_model(weights_dir / "segmenter.keras", compile=False)
        classifiers = [keras.models.load_model(weights_dir / name, compile=False) for name in members]
        screener = cls(segmenter, classifiers, json.loads((weights_dir / "segmenter.json").read_text()),
                       classifier_meta, ScopeModel.load(weights_dir / "scope.npz") if with_scope else None, precision)
        logger.info("loaded %s %s (%d member(s), threshold %.3f, %s) from %s", screener.name, screener.version,
                    len(classifiers), screener.threshold, precision, weights_dir)
        return screener

    def screen(self, images: list[np.ndarray], points: list[OperatingPoint | None] | None = None) -> list[Finding]:
        """Screen decode_image() outputs of any size; models run once per chunk of CHUNK films.

        `points[i]` is film i's operating point (its department's); None means the shipped one.
        """
        if not images:
            return []
        points = points or [None] * len(images)
        if len(points) != len(images):
            raise ValueError(f"{len(points)} operating points for {len(images)} images")
        out = self.outputs(images)
        return [self._finding(out, i, points[i] or self.point) for i in range(len(out))]

    def outputs(self, images: list[np.ndarray]) -> BatchOutput:
        """Every per-film output for decode_image() outputs of any size, in chunks of CHUNK films."""
        # Check every image before any work, so a bad one fails the call fast and names itself.
        checked = [_checked(i, image) for i, image in enumerate(images)]
        return BatchOutput.concat([self.run(np.stack([squash(image) for image in checked[start:start + CHUNK]]))
                                   for start in range(0, len(checked), CHUNK)])

    def flagged_at(self, out: BatchOutput, threshold: float) -> np.ndarray:
        """Per film: flagged for a reason other than the near-threshold band, were `threshold` the threshold."""
        point = OperatingPoint(threshold, threshold)  # an empty band
        return np.array([bool(self._reasons(out, i, point)) for i in range(len(out))], bool)

    def run(self, films: np.ndarray) -> BatchOutput:
        """All per-film outputs for a (N, 224, 224) squashed batch (recalibration uses this too)."""
        small = resize_batch(films, self.seg_size)
        masks = predict_masks(self._segment, small, self.seg_size, batch_size=len(films))
        boxes = [mask_to_box(mask) for mask in masks]
        crops = crop_batch(films, boxes, self.input_size)
        ensemble = self._ensemble(equalize(crops), self.calibration)
        stats = image_stats(small, masks, crops)
        scope = self.scope.scores(ensemble.features, stats) if self.scope is not None else None
        return BatchOutput(**vars(ensemble), boxes=boxes, crops=crops, stats=stats, scope=scope,
                           crop_failed=np.array([b.failure == CROP_FAILED for b in boxes]))

    def _reasons(self, out: BatchOutput, i: int, point: OperatingPoint) -> list[FlagReason]:
        return flag_reasons(replace(self.policy, band_low=point.band_low), float(out.probability[i]),
                            point.threshold, float(out.mc_high[i]), bool(out.crop_failed[i]), out.stats[i],
                            _scope_at(out, i))

    def _finding(self, out: BatchOutput, i: int, point: OperatingPoint) -> Finding:
        prob = float(out.probability[i])
        scope = _scope_at(out, i)
        reasons = self._reasons(out, i, point)
        details = {"precision": self.precision, "scope": scope, "mc_high": round(float(out.mc_high[i]), 4),
                   "member_spread": round(float(out.member_spread[i]), 4),
                   "mc_spread": round(float(out.mc_spread[i]), 4),
                   "crop_contrast": round(float(out.stats[i][STATS.index("crop_std")]), 4),
                   "crop_saturated": round(float(out.stats[i][STATS.index("saturated")]), 4),
                   # Image statistics, kept so drift can be followed per department (studies/drift.py).
                   "stats": {name: round(float(value), 5) for name, value in zip(STATS, out.stats[i])},
                   "heatmap": "Grad-CAM on the last conv block, lung-crop coordinates (crop_box on the film)"}
        return Finding(probability=prob, prediction="PNEUMONIA" if prob >= point.threshold else "NORMAL",
                       threshold=point.threshold, reasons=tuple(reasons), crop_box=out.boxes[i].box,
                       crop=out.crops[i], heatmap=out.heatmap[i], details=details)


def _scope_at(out: BatchOutput, i: int) -> dict | None:
    return {k: round(float(v[i]), 4) for k, v in out.scope.items()} if out.scope is not None else None


def member_files(classifier_meta: dict) -> list[str]:
    """The ensemble's weight files, as classifier.json lists them."""
    return [member["file"] for member in classifier_meta["members"]]


def decode_film(data: bytes) -> np.ndarray:
    """Decode a file into a film `screen` takes; ImageDecodeError says why not, so callers screening many
    files refuse that one alone (the worker, calibration samples)."""
    image = decode_image(data, draft_side=SCREEN_SIDE)
    try:
        _checked(0, image)
    except ValueError as exc:
        raise ImageDecodeError(f"cannot screen the decoded film: {str(exc).removeprefix('image 0: ')}") from None
    return image


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


def _take(value, index: np.ndarray):
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: array[index] for key, array in value.items()}
    if isinstance(value, list):
        return [value[i] for i in index]
    return value[index]


def _concat(values: list):
    if values[0] is None:
        return None
    if isinstance(values[0], dict):
        return {key: np.concatenate([value[key] for value in values]) for key in values[0]}
    if isinstance(values[0], list):
        return [item for value in values for item in value]
    return np.concatenate(values)
