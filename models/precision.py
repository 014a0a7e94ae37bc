"""The number format the models compute in: float32, or bfloat16 where the CPU multiplies it natively.

On a CPU with AMX tiles (Intel Xeon since Sapphire Rapids) oneDNN runs bfloat16 convolutions on them. On
2 such cores `Screener.screen` ran 1.85-2.12x faster, and on 1,000 training films 99.9% of calls and 99.7%
of flag decisions were the same as in float32, with the same AUC to four decimals (README "Model
precision"). Elsewhere bfloat16 is emulated and slower, so `auto` takes it only with AMX and no GPU.

Activations and convolutions go to bfloat16; the weights stay float32 (Keras' mixed_bfloat16 policy).
The pooled features, the dense head and every model output stay float32: the logit, the scope gate's
features and the lung mask's threshold keep full precision.
"""
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

FLOAT32, BFLOAT16 = "float32", "bfloat16"
PRECISIONS = (FLOAT32, BFLOAT16)
CHOICES = ("auto", *PRECISIONS)
CPUINFO = Path("/proc/cpuinfo")


def resolve(choice: str, cpuinfo: Path = CPUINFO) -> str:
    """float32 or bfloat16 for a setting of auto, float32 or bfloat16."""
    if choice not in CHOICES:
        raise ValueError(f"model precision must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice
    return BFLOAT16 if _amx_bf16(cpuinfo) and not _gpus() else FLOAT32


def in_precision(model, precision: str):
    """`model` itself for float32; for bfloat16 a copy that computes in it, with float32 weights and outputs."""
    if precision not in PRECISIONS:
        raise ValueError(f"model precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == FLOAT32:
        return model
    import keras

    outputs = {id(tensor) for tensor in model.outputs}
    head = (keras.layers.GlobalAveragePooling2D, keras.layers.Dropout, keras.layers.Dense, keras.layers.InputLayer)

    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, head) and id(layer.output) not in outputs:
            config["dtype"] = "mixed_bfloat16"
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _amx_bf16(cpuinfo: Path) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux, or no /proc: assume nothing
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def _gpus() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
