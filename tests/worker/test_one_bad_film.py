"""One film the screener would refuse fails only itself, never its batch; the door refuses it first."""
import numpy as np
from PIL import Image

from models.imaging import check_image
from models.screener import Screener
from tests.dicom.factory import dataset, to_bytes
from tests.helpers import chest_film, png_bytes
from worker import pipeline


def _narrow_png() -> bytes:
    return png_bytes((np.random.default_rng(0).random((1000, 40)) * 255).astype(np.uint8))


def test_a_film_that_decodes_too_narrow_fails_alone(tiny_weights):
    screener = Screener.load(tiny_weights)
    outcomes = pipeline.screen_files(screener, [chest_film(0), _narrow_png(), chest_film(1)])
    assert [outcome.finding is not None for outcome in outcomes] == [True, False, True]
    assert "too small" in outcomes[1].error and outcomes[1].error.startswith("cannot screen the decoded film")


def test_the_door_refuses_what_the_screener_would():
    assert "too narrow for a chest film" in check_image(_narrow_png())
    tiny = to_bytes(dataset(np.full((20, 20), 1000, np.uint16)))
    assert "DICOM image is 20x20 px, too small for a chest film" == check_image(tiny)
    wide = Image.fromarray(np.zeros((40, 700), np.uint8))
    assert "700x40 px, too narrow" in check_image(png_bytes(np.asarray(wide)))
    assert check_image(chest_film(0)) is None
