"""Heatmap overlay PNG for the reviewer workstation: Grad-CAM placed on the whole film."""
import io
import logging

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

MAX_SIDE = 256


def colorize(heat: np.ndarray) -> np.ndarray:
    """[0,1] map -> RGB uint8 'hot' colours: black (nothing) -> red -> yellow -> white."""
    heat = np.clip(heat, 0.0, 1.0)[..., None] * 3.0
    rgb = np.clip(heat - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def film_heatmap(heatmap: np.ndarray, crop_box: tuple[float, float, float, float], film_shape: tuple[int, int],
                 max_side: int = MAX_SIDE) -> np.ndarray:
    """The crop-coordinate heatmap placed on a film-shaped canvas (zero outside the crop box)."""
    height, width = film_shape
    scale = min(1.0, max_side / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    x0, y0, x1, y1 = crop_box
    left, top = int(round(x0 * w)), int(round(y0 * h))
    right, bottom = max(left + 1, int(round(x1 * w))), max(top + 1, int(round(y1 * h)))
    canvas = np.zeros((h, w), np.float32)
    resized = Image.fromarray(heatmap.astype(np.float32), mode="F").resize((right - left, bottom - top),
                                                                              Image.Resampling.BILINEAR)
    canvas[top:bottom, left:right] = np.asarray(resized)[: h - top, : w - left]
    return np.clip(canvas, 0.0, 1.0)


def heatmap_png(heatmap: np.ndarray, crop_box: tuple[float, float, float, float],
                film_shape: tuple[int, int]) -> bytes:
    """Colour PNG with the film's aspect ratio; black where the model paid no attention.

    The workstation stretches it over the film view and blends it with `mix-blend-mode: screen`,
    so black leaves the film unchanged (web/templates/review_study.html, web/static/viewer.js).
    """
    image = Image.fromarray(colorize(film_heatmap(heatmap, crop_box, film_shape)), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: optimize=True costs ~20 ms a film
    return buffer.getvalue()
