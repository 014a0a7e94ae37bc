"""Batch norms folded into their convolutions: the same function, fewer layers, and only where it is exact."""
from pathlib import Path

import numpy as np
import pytest

from models.fold import fold_batchnorm

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"


def randomized(model):
    """Non-trivial batch-norm statistics, so a fold that ignored any of them would show."""
    import keras

    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.2, 3, variance.shape)])
    return model


def every_case():
    """Conv->BN->ReLU, a biased separable conv->BN without ReLU, a capped ReLU (not folded into the conv),
    a conv whose output has two consumers (not folded), a branch and a concatenation."""
    import keras
    from keras import layers

    x = inputs = keras.Input((16, 16, 2))
    a = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same", use_bias=False)(x)))
    b = layers.BatchNormalization()(layers.SeparableConv2D(6, 3, padding="same", use_bias=True)(a))
    c = layers.ReLU(max_value=6.0)(layers.BatchNormalization()(layers.Conv2D(4, 1)(b)))
    shared = layers.Conv2D(4, 3, padding="same")(c)
    d = layers.Concatenate()([layers.BatchNormalization()(shared), layers.ReLU()(shared), a])
    out = layers.Dense(1)(layers.GlobalAveragePooling2D()(d))
    return randomized(keras.Model(inputs, out))


def kinds(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_folding_keeps_the_function_and_removes_only_what_it_may():
    model = every_case()
    folded = fold_batchnorm(model)
    x = np.random.default_rng(1).random((5, 16, 16, 2), dtype=np.float32)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), rtol=1e-4, atol=1e-5)
    # The first two Conv->BN pairs fold (with the first ReLU); the capped ReLU stays; the shared conv's BN stays.
    assert kinds(model).count("BatchNormalization") == 4
    assert kinds(folded).count("BatchNormalization") == 1
    assert kinds(folded).count("ReLU") == kinds(model).count("ReLU") - 1
    # A stand-alone copy: the original's layers are not reused.
    assert not {id(layer) for layer in folded.layers} & {id(layer) for layer in model.layers}


def test_a_conv_with_its_own_activation_is_left_alone():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    out = layers.BatchNormalization()(layers.Conv2D(3, 3, activation="relu")(inputs))
    model = randomized(keras.Model(inputs, out))
    folded = fold_batchnorm(model)
    x = np.random.default_rng(2).random((2, 8, 8, 1), dtype=np.float32)
    assert kinds(folded).count("BatchNormalization") == 1
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["segmenter.keras", "classifier.keras"])
def test_shipped_models_fold_to_the_same_outputs(name):
    import keras

    model = keras.models.load_model(WEIGHTS_DIR / name, compile=False)
    folded = fold_batchnorm(model)
    x = np.random.default_rng(3).random((4, *model.input_shape[1:]), dtype=np.float32)
    assert "BatchNormalization" not in kinds(folded)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), atol=1e-4)
