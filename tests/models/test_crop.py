"""Lung crop boxes: a plausible two-lung mask, and the fallback on implausible masks."""
import numpy as np
import pytest

from models.crop import CROP_FAILED, FALLBACK_BOX, equalize, mask_to_box


def two_lungs(size: int = 128) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    mask[30:100, 20:58] = 1.0
    mask[30:100, 70:108] = 1.0
    return mask


def test_two_lungs_give_a_box_with_margin():
    crop = mask_to_box(two_lungs())
    assert crop.failure is None
    x0, y0, x1, y1 = crop.box
    assert x0 < 20 / 128 and x1 > 108 / 128 and y0 < 30 / 128 and y1 > 100 / 128
    assert x0 > 10 / 128 and x1 < 118 / 128  # margin ~8%, not the whole film


def test_empty_mask_falls_back():
    crop = mask_to_box(np.zeros((128, 128), np.float32))
    assert crop.failure == CROP_FAILED and crop.box == FALLBACK_BOX


def test_one_lung_falls_back():
    mask = two_lungs()
    mask[:, 64:] = 0.0
    crop = mask_to_box(mask)
    assert crop.failure == CROP_FAILED and crop.box == FALLBACK_BOX


def test_tiny_or_flat_masks_fall_back():
    speck = np.zeros((128, 128), np.float32)
    speck[60:64, 30:34] = speck[60:64, 90:94] = 1.0
    band = np.zeros((128, 128), np.float32)
    band[60:72, 5:123] = 1.0
    assert mask_to_box(speck).failure == CROP_FAILED
    assert mask_to_box(band).failure == CROP_FAILED


def test_the_box_spans_the_percentiles_of_the_mask_pixels_with_stray_pixels_ignored():
    """The box is the 0.5th-99.5th percentile of the lung pixels' columns and rows plus the margin, exactly."""
    mask = two_lungs()
    mask[5, 2] = mask[120, 125] = 1.0  # strays: min/max would stretch the box to them
    ys, xs = np.nonzero(mask > 0.5)
    x0, x1 = np.percentile(xs, 0.5) / 128, (np.percentile(xs, 99.5) + 1) / 128
    y0, y1 = np.percentile(ys, 0.5) / 128, (np.percentile(ys, 99.5) + 1) / 128
    dx, dy = (x1 - x0) * 0.08, (y1 - y0) * 0.08
    assert mask_to_box(mask).box == pytest.approx((x0 - dx, y0 - dy, x1 + dx, y1 + dy), abs=1e-12)
    assert mask_to_box(mask).box[0] > 2 / 128


def test_equalize_spreads_a_narrow_range():
    crops = np.random.default_rng(0).uniform(0.4, 0.5, (2, 32, 32)).astype(np.float32)
    out = equalize(crops)
    assert out.shape == crops.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
