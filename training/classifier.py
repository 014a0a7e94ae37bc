"""Train one member of the classifier ensemble: a small separable-conv CNN on equalized 128 px lung crops.

train_classifier saves the member and classifier.json uncalibrated (new ensemble) or as calibrated before
(added member); training.recalibrate fits calibration, threshold, flags and scope gate as a separate step
(training.commands.train_member runs both).
"""
import datetime as dt
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from models.calibration import Calibration, sigmoid
from models.crop import CROP_FAILED, equalize
from models.segmenter import compiled, crop_lungs
from training.data import list_images, load_films, patient_id, patient_split
from training.evaluate import binary_metrics
from training.weights import save_model

logger = logging.getLogger(__name__)

NAME = "pneumoscreen-cnn"
INPUT_SIZE = 128
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


def fit_classifier(x_train, y_train, x_val, y_val, epochs: int, seed: int, bn_momentum: float = 0.99, model=None):
    """Train with class weights, label smoothing 0.05 and a warm-up + cosine schedule.

    `model` (one logit from a (S, S, 1) crop) replaces the default `build_classifier` network.
    """
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
    model = model or build_classifier(x_train.shape[1], bn_momentum=bn_momentum)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.05),
                  metrics=[keras.metrics.AUC(from_logits=True, name="auc")])
    logger.info("classifier: %d params, class weights %s", model.count_params(), class_weight)
    model.fit(data, epochs=epochs, class_weight=class_weight, verbose=2,
              validation_data=(x_val[..., None], y_val[:, None].astype(np.float32)), validation_batch_size=128)
    return model


def member_file(member: int) -> str:
    """Weights file of ensemble member `member`: classifier.keras, then classifier-1.keras, ..."""
    return "classifier.keras" if member == 0 else f"classifier-{member}.keras"


def ensemble_version(member_versions: list[str]) -> str:
    """One version for the ensemble: the single member's version, or VERSION+hash of all members'."""
    if len(member_versions) == 1:
        return member_versions[0]
    digest = hashlib.sha256(" ".join(member_versions).encode()).hexdigest()[:8]
    return f"{member_versions[0].split('+')[0]}+{digest}"


def train_classifier(data_dir: Path, out_dir: Path, segmenter_path: Path, epochs: int = 16, member: int = 0,
                     command: str | None = None) -> dict:
    """Train ensemble member `member` on lung crops and record it in classifier.json; returns that meta.

    Member 0 starts a new ensemble (classifier.keras, a fresh uncalibrated classifier.json); member N > 0
    adds or replaces classifier-N.keras and keeps the previous calibration. Either way the bundle needs
    training.recalibrate before serving: scope.npz, fitted on the old ensemble's features, is removed.
    Every member uses the same patient split; the member number seeds initialisation, shuffling and
    augmentation.
    """
    import keras

    started = time.monotonic()
    out_dir = Path(out_dir)
    meta_path = out_dir / "classifier.json"
    members = json.loads(meta_path.read_text())["members"] if member and meta_path.is_file() else []
    if member > len(members):
        raise ValueError(f"cannot train member {member}: {meta_path} lists {len(members)} member(s); "
                         f"train member {len(members)} first")
    keras.utils.set_random_seed(member)
    paths, labels = list_images(Path(data_dir))
    films = load_films(paths)
    train, val = patient_split(paths, labels)
    logger.info("classifier member %d: %d films decoded in %.0fs; %d train / %d val images", member, len(films),
                time.monotonic() - started, len(train), len(val))
    segmenter = keras.models.load_model(segmenter_path, compile=False)
    crops, boxes = crop_lungs(compiled(segmenter), films, INPUT_SIZE, segmenter.input_shape[1])
    failed = np.array([b.failure == CROP_FAILED for b in boxes])
    logger.info("classifier: cropped in %.0fs, %d crop fallbacks", time.monotonic() - started, failed.sum())
    x = equalize(crops)
    del films, crops

    model = fit_classifier(x[train], labels[train], x[val], labels[val], epochs, seed=member)
    call, x_val = compiled(model), x[val]
    logits = np.concatenate([call(x_val[i:i + 256, ..., None]).numpy()[:, 0] for i in range(0, len(val), 256)])
    probs = sigmoid(logits)
    entry = {
        "file": member_file(member), "version": save_model(model, out_dir / member_file(member)),
        "seed": member, "epochs": epochs, "val_auc": binary_metrics(probs, labels[val], 0.5)["auc"],
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(time.monotonic() - started), "command": command or " ".join(sys.argv),
    }
    logger.info("classifier member %d: validation AUC %.4f alone", member, entry["val_auc"])
    members = [*members[:member], entry, *members[member + 1:]]
    # A new ensemble starts uncalibrated (identity, threshold 0.5, no flag band) until training.recalibrate runs.
    meta = json.loads(meta_path.read_text()) if member else {
        "threshold": 0.5, "flag_band_low": 0.5, "calibration": Calibration().to_meta()}
    meta.update({
        "name": NAME, "version": ensemble_version([m["version"] for m in members]), "input_size": INPUT_SIZE,
        "members": members,
        "split": {"val_patients": len({patient_id(paths[i].name) for i in val}),
                  "train_patients": len({patient_id(paths[i].name) for i in train}),
                  "n_train": int(len(train)), "n_val": int(len(val))},
        "crop_fallbacks": int(failed.sum()),
    })
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    # The gate scores the ensemble's features: the old one would misjudge (or not fit) the new ensemble.
    (out_dir / "scope.npz").unlink(missing_ok=True)
    logger.info("classifier member %d saved to %s; the ensemble needs recalibrating", member, out_dir)
    return meta
