"""Small separable-conv CNN on equalized 128 px lung crops; training, calibration and metadata."""
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from models.calibration import choose_flag_band, choose_threshold, fit_temperature, sigmoid
from models.crop import CROP_FAILED, equalize
from models.evaluate import binary_metrics
from models.segmenter import compiled, crop_lungs, save_model
from models.train import list_images, load_films, patient_split, patient_id

logger = logging.getLogger(__name__)

NAME = "pneumoscreen-cnn"
INPUT_SIZE = 128
TARGET_SENSITIVITY = 0.99
MAX_FLAG_SHARE = 0.15
BATCH = 32


def build_classifier(size: int = INPUT_SIZE, stem: int = 32, widths: tuple[int, ...] = (64, 128, 256, 512),
                     bn_momentum: float = 0.99):
    """Conv stem + separable-conv stages + global pooling -> one pneumonia logit."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="crop")
    x = layers.Conv2D(stem, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=bn_momentum)(x))
    for filters in widths:
        x = layers.MaxPooling2D()(x)
        for _ in range(2):
            x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization(momentum=bn_momentum)(x))
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D(name="features")(x))
    outputs = layers.Dense(1, name="logit")(x)
    return keras.Model(inputs, outputs, name="pneumonia_cnn")


def build_augmenter(seed: int = 0):
    """Random rotation, zoom, shift, contrast, brightness and noise for training batches."""
    import keras
    from keras import layers

    return keras.Sequential([
        layers.RandomRotation(0.03, fill_mode="nearest", seed=seed),
        layers.RandomZoom(0.12, fill_mode="nearest", seed=seed),
        layers.RandomTranslation(0.06, 0.06, fill_mode="nearest", seed=seed),
        layers.RandomContrast(0.25, seed=seed),
        layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed),
        layers.GaussianNoise(0.02, seed=seed),
    ], name="augment")


def fit_classifier(x_train, y_train, x_val, y_val, epochs: int, seed: int, bn_momentum: float = 0.99):
    """Train with class weights, label smoothing 0.05 and a warm-up + cosine schedule."""
    import keras
    import tensorflow as tf

    augment = build_augmenter(seed)
    data = tf.data.Dataset.from_tensor_slices((x_train[..., None], y_train[:, None].astype(np.float32)))
    data = (data.shuffle(len(x_train), seed=seed).batch(BATCH)
            .map(lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 1.0), y),
                 num_parallel_calls=1).prefetch(2))
    steps = int(np.ceil(len(x_train) / BATCH))
    counts = np.bincount(y_train, minlength=2)
    class_weight = {i: float(len(y_train) / (2 * counts[i])) for i in range(2)}
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-4, decay_steps=max(1, (epochs - 1) * steps), warmup_target=2e-3, warmup_steps=steps)
    model = build_classifier(x_train.shape[1], bn_momentum=bn_momentum)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.05),
                  metrics=[keras.metrics.AUC(from_logits=True, name="auc")])
    logger.info("classifier: %d params, class weights %s", model.count_params(), class_weight)
    model.fit(data, epochs=epochs, class_weight=class_weight, verbose=2,
              validation_data=(x_val[..., None], y_val[:, None].astype(np.float32)), validation_batch_size=128)
    return model


def train_classifier(data_dir: Path, out_dir: Path, segmenter_path: Path, epochs: int = 16, seed: int = 0,
                     command: str | None = None) -> dict:
    """Train on lung crops with a patient-level split; calibrate, pick threshold/flag band, save to out_dir."""
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    paths, labels = list_images(Path(data_dir))
    films = load_films(paths)
    train, val = patient_split(paths, labels, seed=seed)
    logger.info("classifier: %d films decoded in %.0fs; %d train / %d val images", len(films),
                time.monotonic() - started, len(train), len(val))
    segmenter = keras.models.load_model(segmenter_path, compile=False)
    crops, boxes = crop_lungs(compiled(segmenter), films, INPUT_SIZE, segmenter.input_shape[1])
    failed = np.array([b.failure == CROP_FAILED for b in boxes])
    logger.info("classifier: cropped in %.0fs, %d crop fallbacks", time.monotonic() - started, failed.sum())
    x = equalize(crops)
    del films, crops

    model = fit_classifier(x[train], labels[train], x[val], labels[val], epochs, seed)
    call, x_val = compiled(model), x[val]
    logits = np.concatenate([call(x_val[i:i + 256, ..., None]).numpy()[:, 0] for i in range(0, len(val), 256)])
    y_val = labels[val]
    temperature = fit_temperature(logits, y_val)
    probs = sigmoid(logits / temperature)
    threshold = choose_threshold(probs, y_val, TARGET_SENSITIVITY)
    flag = choose_flag_band(probs, y_val, threshold, MAX_FLAG_SHARE)
    metrics = binary_metrics(probs, y_val, threshold)
    logger.info("classifier: val %s at threshold %.3f; flag band %s", metrics, threshold, flag)

    out_dir = Path(out_dir)
    meta = {
        "name": NAME, "version": save_model(model, out_dir / "classifier.keras"), "input_size": INPUT_SIZE,
        "threshold": threshold, "flag_band_low": flag.pop("flag_band_low"), "temperature": round(temperature, 4),
        "threshold_rule": f"highest threshold with validation sensitivity >= {TARGET_SENSITIVITY}, capped at 0.5",
        "validation": {**metrics, "at_0.5": binary_metrics(probs, y_val, 0.5), **flag},
        "split": {"val_patients": len({patient_id(paths[i].name) for i in val}),
                  "train_patients": len({patient_id(paths[i].name) for i in train}),
                  "n_train": int(len(train)), "n_val": int(len(val))},
        "crop_fallbacks": int(failed.sum()), "epochs": epochs, "seed": seed,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(time.monotonic() - started), "command": command or " ".join(sys.argv),
    }
    (out_dir / "classifier.json").write_text(json.dumps(meta, indent=2) + "\n")
    # Flag policy, scope gate and robustness come from the serving path over the same data.
    from models.recalibrate import recalibrate

    return recalibrate(data_dir, out_dir, command=meta["command"], seed=seed)
