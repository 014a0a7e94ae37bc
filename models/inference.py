"""One pass of every ensemble member per batch: mean logit, features, Grad-CAM and the predictive spread."""
import logging
from dataclasses import dataclass

import numpy as np

from models.calibration import Calibration
from models.fold import fold_batchnorm
from models.precision import FLOAT32, in_precision

logger = logging.getLogger(__name__)

MC_SAMPLES = 32
MC_QUANTILE = 0.9


@dataclass(frozen=True)
class EnsembleOutput:
    """Per-crop arrays of one ensemble pass over N equalized crops."""

    logit: np.ndarray          # (N,) mean of the members' logits
    probability: np.ndarray    # (N,) calibrated probability of that mean logit
    features: np.ndarray       # (N, members x pooled features) side by side, for the scope gate
    heatmap: np.ndarray        # (N, S, S) mean of the members' Grad-CAMs, in [0, 1]
    member_spread: np.ndarray  # (N,) std of the members' calibrated probabilities
    mc_high: np.ndarray        # (N,) MC_QUANTILE of the probabilities over members x dropout samples
    mc_spread: np.ndarray      # (N,) their std


def _member_pass(classifier, precision: str):
    """(traced forward: crops -> (logits, pooled features, Grad-CAM), MC-dropout kernels, dense bias)."""
    import keras
    import tensorflow as tf

    classifier = in_precision(fold_batchnorm(classifier), precision)
    pool = next(layer for layer in classifier.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    dense = classifier.layers[-1]
    dropout = next((layer for layer in classifier.layers if isinstance(layer, keras.layers.Dropout)), None)
    rate = float(dropout.rate) if dropout is not None else 0.0
    head = keras.Model(classifier.inputs, [pool.input, pool.output, classifier.outputs[0]])
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    # Fixed dropout masks: the same film gets the same spread whatever batch it is in.
    keep = np.random.default_rng(0).random((MC_SAMPLES, kernel.shape[0])) >= rate
    mc_kernels = kernel[:, 0][None, :] * keep / max(1 - rate, 1e-6)
    size = int(classifier.input_shape[1])
    spec = tf.TensorSpec((None, size, size, 1), tf.float32)

    @tf.function(input_signature=[spec])
    def forward(x):
        # One tape per batch: each film's logit depends only on its own map, so d(sum)/d(map) is per film.
        with tf.GradientTape() as tape:
            maps, features, logits = head(x, training=False)
            total = tf.reduce_sum(logits)
        # The last block's maps and their gradients are bfloat16 when the convolutions are: Grad-CAM in float32.
        grads, maps = tf.cast(tape.gradient(total, maps), tf.float32), tf.cast(maps, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, (size, size), method="bilinear")[..., 0]
        cam = cam / tf.maximum(tf.reduce_max(cam, axis=(1, 2), keepdims=True), 1e-8)
        return logits[:, 0], features, cam

    return forward, mc_kernels, float(bias[0])


def ensemble_pass(classifiers: list, precision: str = FLOAT32):
    """A function (equalized crops (N, S, S), calibration) -> EnsembleOutput, computed in `precision`.

    The ensemble's logit is the mean of its members' logits; features are the members' pooled
    features side by side; the heatmap is the mean of the members' Grad-CAMs. `mc_high` is the
    MC_QUANTILE of the calibrated probabilities over every member and MC_SAMPLES dropout masks
    each (no extra network pass), so both member disagreement and dropout spread raise it.
    """
    passes = [_member_pass(classifier, precision) for classifier in classifiers]

    def run(crops: np.ndarray, calibrate: Calibration) -> EnsembleOutput:
        x = crops[..., None].astype(np.float32)
        logits, features, cams, mc_logits = [], [], [], []
        for forward, mc_kernels, bias in passes:
            logit, feature, cam = (t.numpy() for t in forward(x))
            feature = feature.astype(np.float64)
            logits.append(logit.astype(np.float64))
            features.append(feature)
            cams.append(np.clip(cam, 0.0, 1.0))
            mc_logits.append(feature @ mc_kernels.T + bias)
        logit = np.mean(logits, axis=0)
        member_probs = calibrate(np.stack(logits, axis=1))
        mc_probs = calibrate(np.concatenate(mc_logits, axis=1))
        return EnsembleOutput(logit=logit, probability=calibrate(logit), features=np.concatenate(features, axis=1),
                              heatmap=np.mean(cams, axis=0).astype(np.float32),
                              member_spread=member_probs.std(axis=1),
                              mc_high=np.quantile(mc_probs, MC_QUANTILE, axis=1), mc_spread=mc_probs.std(axis=1))

    return run
