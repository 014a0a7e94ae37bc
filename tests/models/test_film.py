"""The film for the diagnostic viewer: original values at their bit depth, DICOM window and rescale kept, bounded
size."""
import io

import numpy as np
import pytest
from PIL import Image

from models.film import encode_film, read_film, unpack_film
from models.limits import ImageDecodeError
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import chest_film, data_dir


def test_a_12_bit_dicom_keeps_every_value_and_its_window():
    pixels = chest_pixels(300, 260, bits=12)
    pixels[0, 0], pixels[1, 1] = 4095, 1  # values a window would clip
    film = read_film(to_bytes(dataset(pixels, WindowCenter=1800, WindowWidth=900)))
    header, served = unpack_film(encode_film(film))
    assert served.dtype == np.dtype("<u2") and np.array_equal(served, pixels)
    assert header["bits"] == 12 and header["dicom_window"] and header["presets"]["default"] == [1800.0, 900.0]
    assert (header["width"], header["height"], header["invert"]) == (260, 300, False)
    low, high = header["presets"]["full"][0] - header["presets"]["full"][1] / 2, sum(header["presets"]["full"]) \
        - header["presets"]["full"][1] / 2
    assert (low, high) == (float(pixels.min()), float(pixels.max()))


def test_rescale_and_signed_values_are_sent_as_slope_and_intercept():
    pixels = chest_pixels(120, 100, bits=12).astype(np.int16) - 2048  # signed stored values
    ds = dataset(pixels, signed=True, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=-300, WindowWidth=1000)
    header, served = unpack_film(encode_film(read_film(to_bytes(ds))))
    real = served * header["slope"] + header["intercept"]
    assert np.array_equal(real, pixels.astype(np.float64) * 2 - 100)
    center, width = header["presets"]["default"]
    assert center * header["slope"] + header["intercept"] == pytest.approx(-300)
    assert width * header["slope"] == pytest.approx(1000)


def test_monochrome1_is_marked_for_inversion_and_its_lung_window_is_the_bright_end():
    pixels = 4095 - chest_pixels(200, 180, bits=12)  # MONOCHROME1: lungs are high values
    header, _ = unpack_film(encode_film(read_film(to_bytes(dataset(pixels, photometric="MONOCHROME1")))))
    assert header["invert"] and not header["dicom_window"]

    def edges(name):
        center, width = header["presets"][name]
        return center - width / 2, center + width / 2

    assert edges("lung")[1] == edges("full")[1] == 4095 - 819  # the dark (high) end: lungs
    ramp = (np.mgrid[0:200, 0:180][1] * 20).astype(np.uint16)  # MONOCHROME2, every grey level as common
    header, _ = unpack_film(encode_film(read_film(to_bytes(dataset(ramp)))))
    assert edges("lung")[0] == edges("full")[0] == 0 and edges("lung")[1] < 0.8 * edges("full")[1]


def test_a_16_bit_png_keeps_its_values_and_an_8_bit_jpeg_says_8_bits():
    values = (np.arange(64 * 80, dtype=np.uint32).reshape(64, 80) * 13 % 65536).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    header, served = unpack_film(encode_film(read_film(buffer.getvalue())))
    assert header["bits"] == 16 and np.array_equal(served * header["slope"] + header["intercept"], values)
    header, served = unpack_film(encode_film(read_film(chest_film(size=300))))
    assert header["bits"] == 8 and header["kind"] == "jpeg" and served.max() <= 255 and served.shape == (300, 300)


def test_a_film_over_the_cap_is_reduced_and_says_its_original_size():
    pixels = chest_pixels(900, 700, bits=12)
    header, served = unpack_film(encode_film(read_film(to_bytes(dataset(pixels)), max_side=300)))
    assert served.shape == (300, 233) and (header["original_width"], header["original_height"]) == (700, 900)
    assert abs(float(served.mean()) - float(pixels.mean())) < 20  # box-filtered, not clipped or rescaled


def test_what_is_no_film_is_refused_with_the_reason():
    with pytest.raises(ImageDecodeError, match="not a PNG, JPEG or DICOM"):
        read_film(b"GIF89a not a film at all")


def test_the_real_films_decode_at_full_size():
    folder = data_dir("dicom")
    header, served = unpack_film(encode_film(read_film((folder / "RG1_J2KI.dcm").read_bytes())))
    assert (header["width"], header["height"]) == (1841, 1955) and header["bits"] > 8
    assert served.max() > 255 and header["dicom_window"]
