"""Screener on the tiny untrained bundle: well-formed findings, batching, and input validation."""
import json

import numpy as np
import pytest

from models.reasons import FlagReason
from models.screener import Finding, Screener

SIZES = [(300, 200), (64, 64), (512, 380), (224, 224), (90, 500)]


def films() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(size, dtype=np.float32) for size in SIZES]


def test_findings_are_well_formed(tiny_screener):
    findings = tiny_screener.screen(films())
    assert len(findings) == len(SIZES)
    for finding in findings:
        assert isinstance(finding, Finding)
        assert 0.0 <= finding.probability <= 1.0
        assert finding.threshold == tiny_screener.threshold
        expected = "PNEUMONIA" if finding.probability >= finding.threshold else "NORMAL"
        assert finding.prediction == expected
        assert finding.flagged == bool(finding.reasons)
        assert all(isinstance(reason, FlagReason) for reason in finding.reasons)
        if finding.prediction == "PNEUMONIA":
            assert not finding.flagged
        x0, y0, x1, y1 = finding.crop_box
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        assert finding.crop.ndim == 2 and finding.crop.dtype == np.float32
        assert 0.0 <= finding.crop.min() and finding.crop.max() <= 1.0


def test_tiny_bundle_flags_normal_calls(tiny_screener):
    # Untrained: probabilities near 0.5, inside [flag_band_low 0.4, threshold 0.6); random masks fall back.
    findings = tiny_screener.screen(films())
    assert all(f.prediction == "NORMAL" and f.flagged for f in findings)
    assert any(FlagReason.NEAR_THRESHOLD in f.reasons for f in findings)


def test_batched_equals_one_by_one(tiny_screener):
    images = films()
    batched = [f.probability for f in tiny_screener.screen(images)]
    single = [tiny_screener.screen([image])[0].probability for image in images]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_empty_list(tiny_screener):
    assert tiny_screener.screen([]) == []


@pytest.mark.parametrize("bad, message", [
    (np.zeros((100, 100, 3), np.float32), "2-D"),
    (np.zeros((100, 100), np.uint8), "dtype uint8"),
    (np.full((100, 100), np.nan, np.float32), "NaN"),
    (np.full((100, 100), 255.0, np.float32), r"expected \[0, 1\]"),
    (np.zeros((8, 100), np.float32), "too small"),
    ([[0.0, 1.0]], "numpy array"),
])
def test_bad_input_raises_value_error(tiny_screener, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_screener.screen([np.zeros((64, 64), np.float32), bad])


def test_load_reports_missing_files(tmp_path, tiny_bundle):
    import shutil

    with pytest.raises(FileNotFoundError, match="segmenter.keras, segmenter.json, classifier.json, scope.npz"):
        Screener.load(tmp_path)
    meta = json.loads((tiny_bundle / "classifier.json").read_text())
    assert Screener.load(tiny_bundle).version == meta["version"]
    # An ensemble member listed in classifier.json but not on disk is named.
    partial = shutil.copytree(tiny_bundle, tmp_path / "partial")
    (partial / "classifier-1.keras").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing in .*: classifier-1\.keras"):
        Screener.load(partial)


def test_save_model_versions_by_content_and_reloads_the_same_weights(tmp_path):
    import hashlib

    import keras
    import numpy as np

    from training.segmenter import build_unet
    from training.weights import VERSION, save_model

    model = build_unet(64, widths=(4, 8), bottleneck=8)
    path = tmp_path / "sub" / "m.keras"
    version = save_model(model, path)
    assert version == f"{VERSION}+{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype("float32")
    reloaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(reloaded(x), model(x), atol=1e-6)


BLAS_THREADS = """
import sys
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(2, user_api="blas")  # as NumPy starts on a 2-core machine
from models.screener import Screener
Screener.load(sys.argv[1])
print(sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}))
"""


@pytest.mark.slow  # a fresh process loads TensorFlow
def test_loading_the_models_leaves_numpy_one_blas_thread(tiny_weights):
    """NumPy's idle BLAS threads spin and take the cores from TensorFlow (bench/run's b was 30% slower): in a fresh
    process, as in a worker, loading the models limits BLAS to one thread."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", BLAS_THREADS, str(tiny_weights)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[1]", done.stdout


ONEDNN = """
import os
os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)  # as on a fresh machine
import models.screener
from tensorflow.python.util import _pywrap_util_port
print(_pywrap_util_port.IsMklEnabled())
"""


@pytest.mark.slow  # a fresh process loads TensorFlow
def test_the_models_run_on_onednn_kernels_on_every_cpu():
    """TensorFlow enables oneDNN by itself only on AVX-512 VNNI CPUs; on this project's AVX2 hosts its own kernels
    ran the segmenter at 45 images/s against 95 with oneDNN. In a fresh process, importing the models turns it on
    (the old code printed False on an AVX2 CPU)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", ONEDNN], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "True", done.stdout
