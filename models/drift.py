"""What the service's inputs and outputs looked like on validation films, and how far a week of production
has moved from it: population stability index (PSI) over the reference's decile bins.

PSI = sum over bins of (p - q) * ln(p / q), p the week's share in a bin and q the reference's. Usual
reading (and our limits): below 0.1 stable, 0.1 to 0.25 a moderate shift, 0.25 or more a shift worth
acting on (recalibrate, or find out what changed: scanner, protocol, population).
"""
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"
# Followed for drift: the probability and image statistics (models.scope.STATS names, kept per study).
FEATURES = ("probability", "film_mean", "film_std", "crop_mean", "crop_std", "mask_area")
BINS = 10
PSI_MODERATE, PSI_SHIFT = 0.1, 0.25
_FLOOR = 1e-4  # an empty bin counts as this share, so PSI stays finite


@dataclass(frozen=True)
class Reference:
    """Per feature: inner bin edges at the validation deciles and the validation share in each bin."""

    model_version: str
    n: int
    call_rate: float
    out_of_scope_rate: float
    edges: dict[str, list[float]]
    expected: dict[str, list[float]]
    command: str = ""

    @classmethod
    def fit(cls, model_version: str, features: dict[str, np.ndarray], called: np.ndarray,
            out_of_scope: np.ndarray, command: str = "") -> "Reference":
        edges = {name: sorted(set(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]).round(6).tolist()))
                 for name, values in features.items()}
        expected = {name: _shares(edges[name], values).round(6).tolist() for name, values in features.items()}
        return cls(model_version, int(len(called)), float(np.mean(called)), float(np.mean(out_of_scope)), edges,
                   expected, command)

    def psi(self, name: str, values: np.ndarray) -> float:
        """PSI of `values` against the reference's shares of the same bins."""
        p = np.maximum(_shares(self.edges[name], np.asarray(values, np.float64)), _FLOOR)
        q = np.maximum(np.asarray(self.expected[name]), _FLOOR)
        return float(np.sum((p - q) * np.log(p / q)))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Reference | None":
        """The reference saved beside the weights; None when there is none (drift is then not measured)."""
        return cls(**json.loads(Path(path).read_text())) if Path(path).is_file() else None


def _shares(edges: list[float], values: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


COLOURS = ((31, 90, 170), (200, 80, 30), (40, 150, 60), (150, 60, 160), (120, 120, 120), (20, 160, 170))


def psi_chart_png(title: str, weeks: list[str], psi: dict[str, list[float | None]], width: int = 640,
                  height: int = 300) -> bytes:
    """Weekly PSI per feature as lines, with the moderate and shift limits drawn across, as a PNG."""
    import io

    from PIL import Image, ImageDraw

    left, right, top, bottom = 48, 150, 30, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top_value = max([PSI_SHIFT * 2] + [value for values in psi.values() for value in values if value is not None])

    def xy(index: int, value: float) -> tuple[float, float]:
        span = max(len(weeks) - 1, 1)
        return (left + index * (width - left - right) / span,
                height - bottom - value / top_value * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for limit, label in ((PSI_MODERATE, "0.1 moderate"), (PSI_SHIFT, "0.25 shift")):
        y = xy(0, limit)[1]
        draw.line([(left, y), (width - right, y)], fill=(230, 150, 150), width=1)
        draw.text((width - right + 4, y - 6), label, fill=(180, 60, 60))
    for index, week in enumerate(weeks):
        if index % max(1, len(weeks) // 6) == 0:
            draw.text((xy(index, 0)[0] - 20, height - bottom + 6), week, fill="black")
    for (name, values), colour in zip(psi.items(), COLOURS):
        points = [xy(i, value) for i, value in enumerate(values) if value is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for row, (name, colour) in enumerate(zip(psi, COLOURS)):
        draw.text((width - right + 4, top + 40 + 14 * row), name, fill=colour)
    draw.text((left, 8), title, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
