"""One classifier pass per batch: logits, pooled features, Grad-CAM heatmaps and MC-dropout spread."""
import logging

import numpy as np

from models.calibration import sigmoid

logger = logging.getLogger(__name__)

MC_SAMPLES = 32
MC_QUANTILE = 0.9


def analyse_crops(classifier):
    """A function (equalized crops (N, S, S), temperature) -> dict of per-crop arrays."""
    import keras
    import tensorflow as tf

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
        grads = tape.gradient(total, maps)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, (size, size), method="bilinear")[..., 0]
        cam = cam / tf.maximum(tf.reduce_max(cam, axis=(1, 2), keepdims=True), 1e-8)
        return logits[:, 0], features, cam

    def analyse(crops: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
        logits, features, cam = (t.numpy() for t in forward(crops[..., None].astype(np.float32)))
        features = features.astype(np.float64)
        mc_probs = sigmoid((features @ mc_kernels.T + bias[0]) / temperature)
        return {"logit": logits.astype(np.float64), "probability": sigmoid(logits / temperature),
                "features": features, "heatmap": np.clip(cam, 0.0, 1.0).astype(np.float32),
                "mc_high": np.quantile(mc_probs, MC_QUANTILE, axis=1), "mc_spread": mc_probs.std(axis=1)}

    return analyse
