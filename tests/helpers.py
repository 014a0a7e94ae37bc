"""Plain helpers the tests share: paths, made images, a stub screener, login with CSRF, free ports, waiting."""
import io
import os
import re
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from models.reasons import FlagReason
from models.screener import Finding

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def data_dir(*parts: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason (only for tests that need real films)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Where the made films put their lungs, as fractions of the side (x centres; y centre and half-heights).
LUNG_X, LUNG_Y, LUNG_RX, LUNG_RY = (0.3, 0.7), 0.5, 0.15, 0.3


def chest_film(seed: int = 0, *, opacity: bool = False, size: int = 224, fmt: str = "JPEG") -> bytes:
    """A made chest-like film: bright body, two dark lung fields, noise (so no two seeds are alike).

    `opacity` whitens the lower half of the right-hand lung field, which StubScreener reads as pneumonia.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.75)
    lungs = [((x - cx) / LUNG_RX) ** 2 + ((y - LUNG_Y) / LUNG_RY) ** 2 < 1 for cx in LUNG_X]
    for lung in lungs:
        image[lung] = 0.25
    if opacity:
        image[lungs[1] & (y > LUNG_Y)] = 0.7
    image += rng.normal(0, 0.04, image.shape)
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def chest_films(normal: int, pneumonia: int = 0, seed: int = 0) -> dict[str, bytes]:
    """Made films by name: normal-N.jpeg, then pneumonia-N.jpeg (with an opacity); all distinct."""
    films = {f"normal-{i}.jpeg": chest_film(seed + i) for i in range(normal)}
    films |= {f"pneumonia-{i}.jpeg": chest_film(seed + 1000 + i, opacity=True) for i in range(pneumonia)}
    return films


class StubScreener:
    """Stands in for models.screener.Screener: a film with an opacity in its right-hand lung field is
    PNEUMONIA (0.9, not flagged), any other is NORMAL near the threshold (0.41, flagged near_threshold).

    Which studies get flagged is then known from the films alone, and the flags are stored by the real
    record path (worker.pipeline._store_finding -> studies.scope.scope_reasons).
    """

    name, version, threshold, precision = "stub", "0.0.0+stub", 0.5, "float32"

    def __init__(self):
        self.images = 0

    def screen(self, images: list[np.ndarray], points=None) -> list[Finding]:
        self.images += len(images)
        return [self._finding(image) for image in images]

    def _finding(self, image: np.ndarray) -> Finding:
        crop = np.zeros((8, 8), np.float32)
        if _has_opacity(image):
            return Finding(0.9, "PNEUMONIA", self.threshold, (), (0.0, 0.0, 1.0, 1.0), crop)
        return Finding(0.41, "NORMAL", self.threshold, (FlagReason.NEAR_THRESHOLD,), (0.0, 0.0, 1.0, 1.0), crop)


def _has_opacity(image: np.ndarray) -> bool:
    """The lower right-hand lung field much brighter than the left-hand one (same rows)."""
    height, width = image.shape
    rows = slice(int(height * (LUNG_Y + 0.05)), int(height * (LUNG_Y + 0.2)))

    def field(cx: float) -> float:
        return float(image[rows, int(width * (cx - 0.07)):int(width * (cx + 0.07))].mean())

    return field(LUNG_X[1]) - field(LUNG_X[0]) > 0.2


def csrf(page: bytes) -> str:
    """The CSRF token of a form page."""
    return re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page)[1].decode()


def login(client, username: str, password: str):
    """Log a Flask test client in through the form, CSRF token and all."""
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": csrf(client.get("/login").data)})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, what: str, timeout: float = 120, every: float = 0.05):
    """Poll until predicate() is truthy and return its value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_status(url: str) -> int | None:
    """The status code of a GET, or None when nothing answers."""
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None
