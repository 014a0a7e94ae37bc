"""check_image and decode_image on generated PNG/JPEG files of every depth and colour mode, and on broken bytes."""
import io

import numpy as np
import pytest
from PIL import Image

from models.imaging import ImageDecodeError, check_image, decode_image, to_png


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 60, height: int = 40) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))


def check(pixels: np.ndarray, shape: tuple[int, int]) -> None:
    assert pixels.dtype == np.float32 and pixels.shape == shape
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_8bit_gray_png():
    pixels = decode_image(encode(Image.fromarray(gradient().astype(np.uint8), mode="L")))
    check(pixels, (40, 60))
    assert pixels[0, 0] == 0.0 and pixels[0, -1] == 1.0


def test_16bit_png_is_stretched_to_its_range():
    raw = (gradient() * 16 + 1000).astype(np.uint16)  # a 12-bit detector range, offset
    image = Image.fromarray(raw)
    assert image.mode.startswith("I;16")
    pixels = decode_image(encode(image))
    check(pixels, (40, 60))
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_rgb_jpeg_becomes_gray():
    rgb = np.stack([gradient().astype(np.uint8)] * 3, axis=2)
    pixels = decode_image(encode(Image.fromarray(rgb, mode="RGB"), "JPEG", quality=95))
    check(pixels, (40, 60))
    assert pixels[:, -5:].mean() > 0.9 and pixels[:, :5].mean() < 0.1


def test_palette_png():
    image = Image.fromarray(gradient().astype(np.uint8), mode="L").convert("P")
    check(decode_image(encode(image)), (40, 60))


def test_rgba_transparent_area_is_black():
    rgba = np.full((40, 60, 4), 255, np.uint8)
    rgba[:, :30, 3] = 0
    pixels = decode_image(encode(Image.fromarray(rgba, mode="RGBA")))
    check(pixels, (40, 60))
    assert pixels[:, :30].max() == 0.0 and pixels[:, 30:].min() == 1.0


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    image = Image.fromarray(gradient(60, 40).astype(np.uint8), mode="L")
    pixels = decode_image(encode(image, "JPEG", exif=exif, quality=95))
    check(pixels, (60, 40))


def test_large_image_is_downscaled():
    image = Image.fromarray(np.zeros((1000, 2000), np.uint8), mode="L")
    check(decode_image(encode(image), max_side=512), (256, 512))


def test_truncated_png_is_rejected():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8)))
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_zero_bytes_and_non_images_are_rejected():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError):
        decode_image(b"not an image at all")


def test_to_png_round_trip():
    pixels = decode_image(to_png(gradient() / 255.0))
    check(pixels, (40, 60))


def test_check_image_at_the_door():
    film = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8))
    png, jpeg = encode(film), encode(film, "JPEG")
    assert check_image(png) is None and check_image(jpeg) is None
    assert check_image(b"") == "empty file"
    assert check_image(b"not an image at all") == "not a PNG, JPEG or DICOM image"
    assert check_image(encode(film, "GIF")) == "unsupported image format GIF; send PNG or JPEG"
    assert "too small for a chest film" in check_image(encode(Image.new("L", (20, 300))))
    assert check_image(png[: len(png) // 2]).startswith("corrupt or truncated PNG image")
    assert check_image(jpeg[: len(jpeg) // 2]).startswith("corrupt or truncated JPEG image")


def test_screening_decodes_a_full_size_jpeg_at_the_smallest_scale_it_needs():
    """A 2,304 px JPEG: screening needs 224 px, so it is decoded at 1/8 scale (288 px); pictures for people at 1/4,
    then fitted to 512 px."""
    from models.screener import decode_film

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (2304, 2304), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    assert decode_film(buffer.getvalue()).shape == (288, 288)
    assert decode_image(buffer.getvalue()).shape == (512, 512)
