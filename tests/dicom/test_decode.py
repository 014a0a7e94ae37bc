"""DICOM decoding: real films (MONOCHROME1, bare implicit VR, JPEG 2000) and made ones for every LUT path."""
import numpy as np
import pytest
from pydicom.dataset import Dataset

from models.dicom import check_dicom, decode_dicom, header_meta, is_dicom
from models.imaging import ImageDecodeError, check_image, decode_image, to_png
from studies.files import expand
from tests.dicom.factory import SECRET_ID, SECRET_NAME, chest_pixels, dataset, j2k, jpeg_lossless, to_bytes
from tests.helpers import REPO, data_dir, zip_bytes

OUT = REPO / "test-output"


def _lungs_darker_than_spine(pixels: np.ndarray) -> bool:
    """A chest film shown the right way round: lung fields darker than the mediastinum and spine."""
    h, w = pixels.shape
    middle = pixels[h // 4:3 * h // 4, 9 * w // 20:11 * w // 20].mean()
    lungs = np.mean([pixels[h // 4:3 * h // 4, w // 5:w // 3].mean(), pixels[h // 4:3 * h // 4, 2 * w // 3:4 * w // 5].mean()])
    return middle > lungs + 0.1


@pytest.mark.parametrize("name,shape", [("CR-MONO1-10-chest.dcm", (440, 440)), ("RG1_J2KI.dcm", (1955, 1841))])
def test_real_films_decode_as_chests(name, shape):
    data = (data_dir("dicom") / name).read_bytes()
    assert is_dicom(data) and check_dicom(data) is None and check_image(data) is None
    full = decode_dicom(data)
    assert full.shape == shape and full.dtype == np.float32 and 0 <= full.min() and full.max() <= 1
    assert _lungs_darker_than_spine(full), "MONOCHROME1 not inverted or window wrong"
    small = decode_image(data)
    assert max(small.shape) == min(512, max(shape))
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.png").write_bytes(to_png(small))
    meta = header_meta(data)
    assert meta.modality == "CR" and meta.view_position == "PA" and meta.body_part == "CHEST"
    assert meta.study_instance_uid and meta.sop_instance_uid


def test_monochrome1_is_inverted_and_monochrome2_is_not():
    pixels = chest_pixels(bits=10)
    mono2 = decode_dicom(to_bytes(dataset(pixels, bits=10)))
    mono1 = decode_dicom(to_bytes(dataset(pixels, bits=10, photometric="MONOCHROME1")))
    assert mono2[48, 40] > 0.9 and mono2[48, 24] < 0.1  # body bright, lung dark
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_rescale_and_window_map_to_the_window():
    pixels = chest_pixels(bits=12)  # lungs 819, body 3276; rescaled: lungs -1229, body 1228
    ds = dataset(pixels, RescaleSlope=1, RescaleIntercept=-2048, WindowCenter=[0, 500], WindowWidth=[1000, 10])
    out = decode_dicom(to_bytes(ds))
    assert out[48, 24] == 0.0 and out[48, 40] == 1.0 and out[0, 0] == 1.0
    ds = dataset(pixels, RescaleSlope=1, RescaleIntercept=-2048, WindowCenter=-1229, WindowWidth=400)
    assert abs(float(decode_dicom(to_bytes(ds))[48, 24]) - 0.5) < 0.01  # lungs in the middle of the window


def test_the_narrowest_window_is_a_step_even_at_its_centre():
    """Width 1 is the standard's narrowest window: a step at centre - 0.5. The linear formula divided by zero
    there, and a pixel on the step became NaN, which failed the whole film."""
    pixels = chest_pixels(bits=12)  # lungs 819, body 3276; with slope 0.5: lungs 409.5, body 1638
    ds = dataset(pixels, RescaleSlope=0.5, RescaleIntercept=0, WindowCenter=410, WindowWidth=1)
    out = decode_dicom(to_bytes(ds))
    assert np.isfinite(out).all() and set(np.unique(out)) <= {0.0, 1.0}
    assert out[48, 24] == 0.0 and out[48, 40] == 1.0  # lungs on the step: black; body above it: white


def test_voi_lut_sequence_is_applied():
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = (255 - np.arange(4096) // 16).astype(np.uint16).tobytes()  # inverting: bright lungs
    ds = dataset(chest_pixels(bits=12), VOILUTSequence=[item], WindowCenter=2048, WindowWidth=4096)
    out = decode_dicom(to_bytes(ds))
    assert out[48, 24] > out[48, 40]


@pytest.mark.parametrize("bits,signed", [(10, False), (12, False), (16, False), (16, True)])
def test_bit_depths_use_their_range(bits, signed):
    pixels = chest_pixels(bits=bits - 1 if signed else bits).astype(np.int32)
    if signed:
        pixels -= 2 ** (bits - 2)
    out = decode_dicom(to_bytes(dataset(pixels, bits=bits, signed=signed)))
    assert out[48, 40] > 0.95 and out[48, 24] < 0.05


@pytest.mark.parametrize("encode", [j2k, jpeg_lossless], ids=["jpeg2000", "jpeg-lossless"])
def test_compressed_transfer_syntaxes_decode_losslessly(encode):
    pixels = chest_pixels(bits=12)
    plain = decode_dicom(to_bytes(dataset(pixels.copy())))
    data = to_bytes(encode(dataset(pixels.copy())))
    np.testing.assert_array_equal(decode_dicom(data), plain)
    assert check_image(data) is None


def test_bare_dataset_without_preamble_or_meta():
    data = to_bytes(dataset(chest_pixels()), preamble=False)
    assert data[128:132] != b"DICM" and is_dicom(data) and check_image(data) is None
    assert decode_image(data).shape == (96, 80)


def test_bad_dicom_files_get_a_reason():
    no_pixels = dataset(chest_pixels())
    del no_pixels.PixelData
    assert "no pixel data" in check_image(to_bytes(no_pixels))
    colour = dataset(chest_pixels(), photometric="RGB")
    assert "not a grayscale radiograph" in check_image(to_bytes(colour))
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"garbage"
    assert check_image(broken)
    truncated = to_bytes(j2k(dataset(chest_pixels())))[:-200]
    with pytest.raises(ImageDecodeError):
        decode_image(truncated)


def test_zip_of_dicom_carries_header_attributes_but_no_patient_identity():
    film = dataset(chest_pixels(), view="AP")
    items = list(expand("study.zip", zip_bytes({"IM0001": to_bytes(film), "notes.txt": b"hello"})))
    good, bad = items
    assert good.error is None and bad.error and bad.meta is None
    assert good.meta.view_position == "AP" and good.meta.patient_age == "004Y"
    assert good.meta.study_instance_uid == film.StudyInstanceUID
    assert SECRET_NAME not in str(good.meta) and SECRET_ID not in str(good.meta)
