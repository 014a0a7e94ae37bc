"""Fixtures for model tests: the shared data folder, a tiny model bundle, the shipped weights."""
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data beside the checkout; tests needing it skip when it is absent."""
    if not (DATA_DIR / "kermany-train").is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR} (expected ../shared/data beside the checkout)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """An untrained tiny segmenter + classifier saved once per session."""
    from tests.models.bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="session")
def tiny_screener(tiny_bundle):
    """The tiny bundle loaded as a Screener."""
    from models.screener import Screener

    return Screener.load(tiny_bundle)
