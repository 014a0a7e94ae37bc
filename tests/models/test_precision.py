"""bfloat16 inference (models/precision.py): chosen only where the CPU has it, and the same calls as float32."""
import numpy as np
import pytest

from models import precision
from models.imaging import decode_image
from models.precision import BFLOAT16, FLOAT32, in_precision, resolve
from models.screener import Screener
from tests.models.test_shipped_weights import WEIGHTS_DIR, pick

SAPPHIRE_RAPIDS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize(("cpu", "gpu", "expected"), [(SAPPHIRE_RAPIDS, False, BFLOAT16), (ZEN4, False, FLOAT32),
                                                      (SAPPHIRE_RAPIDS, True, FLOAT32), (None, False, FLOAT32)],
                         ids=["amx", "bf16-without-amx", "amx-and-a-gpu", "no-cpuinfo"])
def test_auto_takes_bfloat16_only_on_a_cpu_with_amx_and_no_gpu(tmp_path, monkeypatch, cpu, gpu, expected):
    cpuinfo = tmp_path / "cpuinfo"
    if cpu is not None:  # None: no /proc/cpuinfo to read
        cpuinfo.write_text("processor\t: 0\n" + cpu)
    monkeypatch.setattr(precision, "_gpus", lambda: gpu)
    assert resolve("auto", cpuinfo) == expected
    assert resolve(FLOAT32, cpuinfo) == FLOAT32 and resolve(BFLOAT16, cpuinfo) == BFLOAT16


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="model precision must be one of auto, float32, bfloat16, got 'fp16'"):
        resolve("fp16")
    with pytest.raises(ValueError, match="must be one of float32, bfloat16"):
        in_precision(object(), "auto")  # resolved before a model is built


@pytest.mark.parametrize("name", ["segmenter.keras", "classifier.keras"])
def test_bfloat16_computes_inside_and_keeps_float32_weights_and_outputs(tiny_bundle, name):
    import keras

    model = keras.models.load_model(tiny_bundle / name, compile=False)
    assert in_precision(model, FLOAT32) is model
    copy = in_precision(model, BFLOAT16)
    outputs = {id(tensor) for tensor in copy.outputs}
    convs = [layer for layer in copy.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D))]
    inside = [layer for layer in convs if id(layer.output) not in outputs]
    assert inside and all(layer.compute_dtype == "bfloat16" for layer in inside)
    assert all(layer.compute_dtype == "float32" for layer in copy.layers if id(layer.output) in outputs)
    assert all(weight.dtype == "float32" for weight in copy.weights)
    films = np.random.default_rng(0).random((4, *model.input_shape[1:]), np.float32)
    wide, narrow = model(films, training=False), copy(films, training=False)
    assert narrow.dtype == "float32"
    np.testing.assert_allclose(np.asarray(narrow), np.asarray(wide), atol=0.05)


@pytest.mark.slow  # the shipped models on real films, twice
def test_the_shipped_models_in_bfloat16_make_the_same_calls_as_in_float32(data_dir):
    films = [decode_image(p.read_bytes()) for folder in ("NORMAL", "PNEUMONIA")
             for p in pick(data_dir / "kermany-train" / folder, 24)]
    wide = Screener.load(WEIGHTS_DIR).screen(films)
    narrow = Screener.load(WEIGHTS_DIR, precision=BFLOAT16).screen(films)
    assert {f.details["precision"] for f in wide} == {FLOAT32}
    assert {f.details["precision"] for f in narrow} == {BFLOAT16}
    # bench/precision.py on 1,000 training films: 99.9% the same call, |difference| 0.014 at the 99th percentile.
    same = sum(a.prediction == b.prediction for a, b in zip(wide, narrow))
    assert same >= len(films) - 1, [(a.probability, b.probability) for a, b in zip(wide, narrow)]
    delta = np.abs([a.probability - b.probability for a, b in zip(wide, narrow)])
    assert np.median(delta) < 0.005 and delta.max() < 0.1, delta
    assert np.median([np.abs(a.heatmap - b.heatmap).mean() for a, b in zip(wide, narrow)]) < 0.02
