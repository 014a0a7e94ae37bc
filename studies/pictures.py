"""Pictures of a study for people (thumbnail, film view, lung crop, heatmap overlay), made on first use.

The worker keeps only what the models alone know, small: the Grad-CAM map as an 8-bit grayscale PNG at its own
resolution (`attention`), and the crop box on the prediction. The rest is made from the stored original the
first time a page, the Secondary Capture or a purge asks for it, then kept: screening never waits on encoding
pictures nobody may open (bench/run: about 4.4 ms a film, a sixth of the service's time per film).
"""
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.orm import object_session

from core.storage import ATTENTION, DERIVED_KINDS, Storage
from db.models import Study
from models.heatmap import heatmap_png
from models.imaging import ImageDecodeError, decode_image, to_png

logger = logging.getLogger(__name__)

THUMB_SIDE = 128
CROP_SIDE = 256


def attention_png(heatmap: np.ndarray) -> bytes:
    """The Grad-CAM map, [0, 1], as the worker keeps it."""
    return to_png(heatmap)


def can_make(storage: Storage, study: Study, kind: str) -> bool:
    """Whether `picture` can give this kind: made already, or its sources are there."""
    study = _source(study)
    if kind not in DERIVED_KINDS or study.prediction is None:
        return False
    if storage.has_derived(study.id, kind):
        return True
    if kind == "heatmap" and not storage.has_derived(study.id, ATTENTION):
        return False
    return storage.path(study.storage_key).exists()


def picture(storage: Storage, study: Study, kind: str) -> Path | None:
    """The file of a picture of `study` (for a copy of an earlier upload, its original's), made now when it was not
    yet; None when it cannot be made (no result, the original purged before it was made, no heatmap)."""
    study = _source(study)
    if not can_make(storage, study, kind):
        return None
    if not storage.has_derived(study.id, kind) and not _make_missing(storage, study, [kind]):
        return None
    return storage.derived_path(study.id, kind)


def make_all(storage: Storage, study: Study) -> int:
    """Make every picture of a study that can still be made (before its original goes); returns how many."""
    return _make_missing(storage, study, [kind for kind in DERIVED_KINDS if can_make(storage, study, kind)
                                          and not storage.has_derived(study.id, kind)])


def _source(study: Study) -> Study:
    """The study whose film and pictures these are: a copy of an earlier upload shows its original's."""
    return object_session(study).get(Study, study.duplicate_of_id) if study.duplicate_of_id else study


def _make_missing(storage: Storage, study: Study, kinds: list[str]) -> int:
    """Decode the stored original once and make these pictures of it; returns how many (0 when it is gone)."""
    if not kinds:
        return 0
    try:
        film = decode_image(storage.get(study.storage_key))
    except (FileNotFoundError, ImageDecodeError) as exc:  # decoded once already: only a lost or changed file
        logger.warning("study %d: cannot make its pictures: %s", study.id, exc)
        return 0
    for kind in kinds:
        storage.put_derived(study.id, kind, _make(storage, study, kind, film))
    return len(kinds)


def _make(storage: Storage, study: Study, kind: str, film: np.ndarray) -> bytes:
    if kind == "thumb":
        return to_png(film, THUMB_SIDE)
    if kind == "view":
        return to_png(film)
    height, width = film.shape
    x0, y0, x1, y1 = study.prediction.crop_box
    if kind == "crop":  # the box the model read, squared as the model saw it
        box = (int(x0 * width), int(y0 * height), max(int(x0 * width) + 1, int(x1 * width)),
               max(int(y0 * height) + 1, int(y1 * height)))
        crop = Image.fromarray(np.clip(film * 255.0 + 0.5, 0, 255).astype(np.uint8)).crop(box)
        buffer = io.BytesIO()
        crop.resize((CROP_SIDE, CROP_SIDE), Image.Resampling.BILINEAR).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    attention = np.asarray(Image.open(storage.derived_path(study.id, ATTENTION)), np.float32) / 255.0
    return heatmap_png(attention, (x0, y0, x1, y1), film.shape)
