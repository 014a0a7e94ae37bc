"""Lung crop boxes from predicted masks, with a fixed fallback, plus batch crop and equalization."""
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.reasons import FlagReason

logger = logging.getLogger(__name__)

# Films are squashed to this square size before segmentation and cropping, like the training data.
FILM_SIZE = 224
MARGIN = 0.08
# Central box used when the mask is implausible: covers both lungs on typical pediatric films.
FALLBACK_BOX = (0.10, 0.08, 0.90, 0.92)
CROP_FAILED = FlagReason.LUNG_CROP_FAILED
MIN_AREA = 0.04
MIN_SIDE_BALANCE = 0.2
MIN_WIDTH, MIN_HEIGHT = 0.3, 0.25
ASPECT_RANGE = (0.6, 2.5)


@dataclass(frozen=True)
class CropBox:
    """A crop box as (x0, y0, x1, y1) fractions of the film; `failure` is CROP_FAILED when it fell back."""

    box: tuple[float, float, float, float]
    failure: FlagReason | None = None


def mask_to_box(mask: np.ndarray, margin: float = MARGIN) -> CropBox:
    """Box around both lungs in a [0,1] mask, or the fixed central box when the mask is implausible."""
    binary = mask > 0.5
    extent = _extent(binary)
    problem = _implausible(binary, extent)
    if problem:
        logger.debug("lung crop fell back: %s", problem)
        return CropBox(FALLBACK_BOX, CROP_FAILED)
    height, width = mask.shape
    x0, x1, y0, y1 = extent
    x0, x1 = x0 / width, (x1 + 1) / width
    y0, y1 = y0 / height, (y1 + 1) / height
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    box = (max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy))
    return CropBox(tuple(float(v) for v in box))


def _extent(binary: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x0, x1, y0, y1) in pixels: the 0.5th and 99.5th percentiles of the set pixels' columns and rows, not
    min/max, so that a few stray pixels do not stretch the box; None for an empty mask."""
    ys, xs = np.nonzero(binary)
    if not len(xs):
        return None
    (x0, x1), (y0, y1) = np.percentile(xs, [0.5, 99.5]), np.percentile(ys, [0.5, 99.5])
    return x0, x1, y0, y1


def _implausible(binary: np.ndarray, extent: tuple[float, float, float, float] | None) -> str | None:
    """The reason a binary lung mask with this _extent cannot be trusted, or None."""
    height, width = binary.shape
    area = binary.mean()
    if area < MIN_AREA:
        return f"mask area {area:.3f} too small"
    left, right = binary[:, : width // 2].sum(), binary[:, width // 2:].sum()
    if min(left, right) < MIN_SIDE_BALANCE * max(left, right):
        return "one lung only"
    x0, x1, y0, y1 = extent
    box_w, box_h = (x1 - x0 + 1) / width, (y1 - y0 + 1) / height
    if box_w < MIN_WIDTH or box_h < MIN_HEIGHT:
        return f"box {box_w:.2f}x{box_h:.2f} too small"
    aspect = box_w * width / (box_h * height)
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return f"box aspect {aspect:.2f} implausible"
    return None


def squash(image: np.ndarray, size: int = FILM_SIZE) -> np.ndarray:
    """Resize a 2-D [0,1] array to size x size, ignoring aspect ratio (as the training films were)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    resized = Image.fromarray(image.astype(np.float32, copy=False), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def resize_batch(films: np.ndarray, size: int) -> np.ndarray:
    """Resize a (N, H, W) batch to (N, size, size) with TensorFlow (bilinear, antialiased)."""
    import tensorflow as tf

    out = tf.image.resize(films[..., None], (size, size), antialias=True)
    return np.clip(out.numpy()[..., 0], 0.0, 1.0)


def crop_batch(films: np.ndarray, boxes: list[CropBox], size: int) -> np.ndarray:
    """Cut each box out of a (N, H, W) film batch and resize it to (N, size, size)."""
    import tensorflow as tf

    coords = np.array([[b.box[1], b.box[0], b.box[3], b.box[2]] for b in boxes], np.float32)
    crops = tf.image.crop_and_resize(films[..., None], coords, np.arange(len(boxes), dtype=np.int32),
                                     (size, size), method="bilinear")
    return np.clip(crops.numpy()[..., 0], 0.0, 1.0)


def equalize(crops: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram-equalize each image of a (N, H, W) [0,1] batch."""
    out = np.empty_like(crops, dtype=np.float32)
    for i, crop in enumerate(crops):
        levels = np.clip((crop * (bins - 1) + 0.5).astype(np.int32), 0, bins - 1)
        cdf = np.cumsum(np.bincount(levels.ravel(), minlength=bins)).astype(np.float32)
        low = cdf[cdf > 0][0]
        span = max(cdf[-1] - low, 1.0)
        out[i] = np.clip((cdf[levels] - low) / span, 0.0, 1.0)
    return out
