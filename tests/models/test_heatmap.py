"""Grad-CAM heatmaps: per-film maps in [0, 1] at crop size, placed on the film for the workstation."""
import io

import numpy as np
from PIL import Image

from models.heatmap import colorize, film_heatmap, heatmap_png


def test_findings_carry_heatmaps_at_crop_resolution(tiny_screener):
    rng = np.random.default_rng(1)
    findings = tiny_screener.screen([rng.random((300, 200), dtype=np.float32) for _ in range(3)])
    for finding in findings:
        assert finding.heatmap.shape == finding.crop.shape == (tiny_screener.input_size,) * 2
        assert finding.heatmap.dtype == np.float32
        assert 0.0 <= finding.heatmap.min() and finding.heatmap.max() <= 1.0


def test_heatmap_is_placed_inside_the_crop_box():
    heat = np.ones((64, 64), np.float32)
    canvas = film_heatmap(heat, (0.25, 0.5, 0.75, 1.0), (400, 200))
    assert canvas.shape == (256, 128)  # film aspect kept, long side 256
    assert canvas[:, :30].max() == 0.0 and canvas[:120, :].max() == 0.0
    assert canvas[140:250, 40:90].min() > 0.99


def test_png_is_colour_with_the_film_aspect_and_black_background():
    heat = np.zeros((32, 32), np.float32)
    heat[10:20, 10:20] = 1.0
    image = Image.open(io.BytesIO(heatmap_png(heat, (0.0, 0.0, 1.0, 1.0), (100, 150))))
    assert image.mode == "RGB" and image.size == (150, 100)
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [0, 0, 0]  # black: unchanged under the viewer's screen blend
    assert pixels[50, 75].tolist() == [255, 255, 255]
    assert colorize(np.array([[0.5]]))[0, 0, 0] == 255 and colorize(np.array([[0.5]]))[0, 0, 2] == 0
