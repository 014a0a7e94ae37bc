"""Batched lung-mask prediction with the 128 px U-Net (trained by training/segmenter.py) and lung crops."""
import logging

import numpy as np

from models.crop import CropBox, crop_batch, mask_to_box, resize_batch
from models.fold import fold_batchnorm
from models.precision import FLOAT32, in_precision

logger = logging.getLogger(__name__)

INPUT_SIZE = 128


def compiled(model, precision: str = FLOAT32):
    """A traced-once `model(x, training=False)` for any batch size (no per-call retracing), batch norms
    folded into their convolutions (models/fold.py), computing in `precision` (models/precision.py)."""
    import tensorflow as tf

    model = in_precision(fold_batchnorm(model), precision)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def predict_masks(call, films: np.ndarray, size: int = INPUT_SIZE, batch_size: int = 64) -> np.ndarray:
    """Lung masks (N, size, size) for a (N, H, W) film batch with a `compiled` segmenter."""
    small = resize_batch(films, size) if films.shape[1:] != (size, size) else films
    out = [call(small[i:i + batch_size, ..., None]).numpy()[..., 0] for i in range(0, len(small), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def crop_lungs(call, films: np.ndarray, size: int, seg_size: int = INPUT_SIZE) -> tuple[np.ndarray, list[CropBox]]:
    """Lung crops (N, size, size) and their boxes for a (N, H, W) film batch, as the Screener cuts them."""
    boxes = [mask_to_box(mask) for mask in predict_masks(call, films, seg_size)]
    return crop_batch(films, boxes, size), boxes
