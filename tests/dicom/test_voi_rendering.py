"""DICOM without a window or VOI LUT: rendered over the values it uses, as its JPEG export is, so the same pixels
get the same flags (bench/voi_rendering.py measures the renderings on 60 films)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.dicom import decode_dicom
from models.imaging import decode_image
from models.reasons import FlagReason
from tests.dicom.factory import dataset, to_bytes
from tests.helpers import data_dir

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"


def without_voi(gray: np.ndarray, photometric: str = "MONOCHROME2", padding: bool = False) -> bytes:
    """8-bit film pixels as a 12-bit CR using part of its range (600..2130), no window, as CR often arrives."""
    stored = gray.astype(np.int32) * 6 + 600
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    extra = {}
    if padding:  # a collimation border the modality marked as padding
        stored = np.pad(stored, 8, constant_values=0)
        extra["PixelPaddingValue"] = 0
    return to_bytes(dataset(stored.astype(np.uint16), photometric=photometric, **extra))


def test_the_used_range_is_stretched_to_black_and_white_without_clipping_the_tails():
    gray = np.random.default_rng(0).integers(10, 241, (64, 80)).astype(np.uint8)
    expected = (gray.astype(np.float32) - 10) / 230
    np.testing.assert_allclose(decode_dicom(without_voi(gray)), expected, atol=1e-6)
    np.testing.assert_allclose(decode_dicom(without_voi(gray, "MONOCHROME1")), expected, atol=1e-6)
    padded = decode_dicom(without_voi(gray, padding=True))
    np.testing.assert_allclose(padded[8:-8, 8:-8], expected, atol=1e-6)  # padding does not set the range
    assert padded[:8].max() == 0.0 and padded[:, -8:].max() == 0.0  # and shows black


@pytest.fixture(scope="module")
def shipped():
    from models.screener import Screener

    return Screener.load(WEIGHTS_DIR)


@pytest.mark.slow  # the shipped models on real films
def test_a_real_film_without_voi_gets_the_flags_and_probability_of_its_jpeg(shipped):
    folder = data_dir("kermany-fullsize")
    paths = [path for label in ("NORMAL", "PNEUMONIA") for path in sorted((folder / label).glob("*.jpeg"))[:4]]
    as_jpeg = shipped.screen([decode_image(path.read_bytes()) for path in paths])
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        as_dicom = shipped.screen([decode_image(without_voi(np.asarray(Image.open(path).convert("L")), photometric))
                                   for path in paths])
        for path, jpeg, dicom in zip(paths, as_jpeg, as_dicom):
            assert (FlagReason.OUT_OF_SCOPE in dicom.reasons) == (FlagReason.OUT_OF_SCOPE in jpeg.reasons), path.name
            assert dicom.prediction == jpeg.prediction, path.name
            assert abs(dicom.probability - jpeg.probability) < 0.005, path.name
