"""Train the compact 3-level U-Net that segments both lungs at 128 px, on image/mask pairs."""
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from models.crop import resize_batch
from models.imaging import decode_image
from models.segmenter import INPUT_SIZE, compiled, predict_masks
from training.weights import save_model

logger = logging.getLogger(__name__)

VAL_SHARE = 0.15


def build_unet(size: int = INPUT_SIZE, widths: tuple[int, ...] = (16, 32, 64), bottleneck: int = 128):
    """U-Net: `widths` encoder levels, a bottleneck, mirrored decoder, sigmoid lung mask."""
    import keras
    from keras import layers

    def block(x, filters: int):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input((size, size, 1), name="film")
    x, skips = inputs, []
    for filters in widths:
        x = block(x, filters)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, bottleneck)
    for filters, skip in zip(reversed(widths), reversed(skips)):
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skip]), filters)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(x)
    return keras.Model(inputs, outputs, name="lung_unet")


def load_pairs(pairs_dir: Path, size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Read images/*.png and masks/*.png into (N, size, size) float32 arrays."""
    image_paths = sorted((pairs_dir / "images").glob("*.png"))
    if not image_paths:
        raise FileNotFoundError(f"no images/*.png under {pairs_dir}")
    images, masks = [], []
    for path in image_paths:
        mask_path = pairs_dir / "masks" / path.name
        if not mask_path.exists():
            logger.warning("no mask for %s, skipped", path.name)
            continue
        images.append(decode_image(path.read_bytes()))
        masks.append(decode_image(mask_path.read_bytes()))
    images = resize_batch(np.stack(images), size)
    masks = (resize_batch(np.stack(masks), size) > 0.5).astype(np.float32)
    return images, masks


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean per-image Dice and IoU of binary (N, H, W) masks."""
    pred, truth = pred > 0.5, truth > 0.5
    inter = (pred & truth).sum(axis=(1, 2))
    total = pred.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    dice = (2 * inter + 1e-6) / (total + 1e-6)
    iou = (inter + 1e-6) / (union + 1e-6)
    return float(dice.mean()), float(iou.mean())


def _dice_bce(y_true, y_pred):
    import keras
    from keras import ops

    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true + y_pred, axis=(1, 2, 3))
    dice = (2 * inter + 1.0) / (total + 1.0)
    return keras.losses.binary_crossentropy(y_true, y_pred, axis=(1, 2, 3)) + (1 - dice)


def train_segmenter(pairs_dir: Path, out_dir: Path, epochs: int = 6, seed: int = 0,
                    command: str | None = None) -> dict:
    """Train the U-Net on image/mask pairs, report held-out Dice/IoU, save .keras + .json to out_dir."""
    import keras
    import tensorflow as tf

    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    images, masks = load_pairs(Path(pairs_dir))
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(len(images) * VAL_SHARE))
    val, train = order[:n_val], order[n_val:]
    logger.info("segmenter: %d train, %d val pairs (loaded in %.0fs)", len(train), n_val,
                time.monotonic() - started)

    def augment(x, y):
        flip = tf.random.uniform(()) < 0.5
        x = tf.where(flip, tf.reverse(x, [1]), x)
        y = tf.where(flip, tf.reverse(y, [1]), y)
        gamma = tf.exp(tf.random.uniform((), -0.4, 0.4))
        x = tf.clip_by_value(x, 1e-6, 1.0) ** gamma
        x = tf.clip_by_value(x * tf.random.uniform((), 0.8, 1.2) + tf.random.uniform((), -0.1, 0.1), 0, 1)
        return x, y

    data = tf.data.Dataset.from_tensor_slices((images[train, ..., None], masks[train, ..., None]))
    data = data.shuffle(len(train), seed=seed).map(augment).batch(16).prefetch(2)
    model = build_unet()
    steps = epochs * int(np.ceil(len(train) / 16))
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
                  loss=_dice_bce)
    model.fit(data, epochs=epochs, verbose=2)
    dice, iou = dice_iou(predict_masks(compiled(model), images[val]), masks[val])
    logger.info("segmenter: val dice %.4f iou %.4f", dice, iou)

    out_dir = Path(out_dir)
    meta = {
        "name": "pneumoscreen-lung-unet", "version": save_model(model, out_dir / "segmenter.keras"),
        "input_size": INPUT_SIZE,
        "val_dice": round(dice, 4), "val_iou": round(iou, 4), "n_train": int(len(train)),
        "n_val": int(n_val), "epochs": epochs, "seed": seed,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(time.monotonic() - started), "command": command or " ".join(sys.argv),
    }
    (out_dir / "segmenter.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
