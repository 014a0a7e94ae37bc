"""`pneumoscreen calibrate`: a department's operating point from its own labelled films.

The films are screened as the worker would (any file type the service takes), the point is chosen by
conformal risk control on the miss rate (models.operating_point), then stored versioned, active and
audited for the department (studies.calibrations).
"""
import getpass
import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings import Settings
from db.models import SiteCalibration
from db.session import one_off_session
from models.imaging import ImageDecodeError, decode_image
from models.operating_point import Choice, choose, roc_png
from models.screener import BatchOutput
from studies.calibrations import save_calibration
from studies.files import walk
from training.data import CLASSES
from worker.pipeline import load_screener

logger = logging.getLogger(__name__)
CHUNK = 64


@dataclass
class Calibrated:
    """What `calibrate` did: the stored record, what the sample says, and the files it could not read."""

    record: SiteCalibration
    choice: Choice
    skipped: list[str]


def calibrate_folder(folder: Path, settings: Settings, department: str, miss_rate: float) -> Calibrated:
    """Screen folder/NORMAL and folder/PNEUMONIA, choose the point, store it; ValueError says what is wrong."""
    screener = load_screener(settings.weights_dir)
    outputs, labels, skipped, digest = [], [], [], hashlib.sha256()
    for label, name in enumerate(CLASSES):
        if not (folder / name).is_dir():
            raise ValueError(f"{folder / name} is missing: put the labelled films in {name}/ and "
                             f"{CLASSES[1 - label]}/ folders")
        items = walk([folder / name])
        while chunk := list(itertools.islice(items, CHUNK)):
            images = []
            for item in chunk:
                image = _decode(item)
                if isinstance(image, str):
                    skipped.append(f"{item.name}: {image}")
                    continue
                images.append(image)
                digest.update(f"{name}/{hashlib.sha256(item.data).hexdigest()}\n".encode())
            if images:
                outputs.append(screener.outputs(images).without_images())
                labels += [label] * len(images)
    if not outputs:
        raise ValueError(f"no readable films under {folder}/NORMAL or {folder}/PNEUMONIA")
    out, labels = BatchOutput.concat(outputs), np.array(labels)
    choice = choose(out.probability, labels, lambda threshold: screener.flagged_at(out, threshold), miss_rate)
    png = roc_png(out.probability, labels, choice.point,
                  f"{department}: {choice.n_pneumonia} pneumonia, {choice.n_normal} normal films")
    with one_off_session(settings.database_url, write=True) as session:
        record = save_calibration(session, department, choice, screener.version, digest.hexdigest(), png,
                                  actor_id=None, by=f"cli:{getpass.getuser()}")
        session.expunge(record)
    return Calibrated(record, choice, skipped)


def _decode(item) -> np.ndarray | str:
    if item.error:
        return item.error
    try:
        return decode_image(item.data)
    except ImageDecodeError as exc:
        return str(exc)


def report(result: Calibrated, department: str) -> str:
    """The operating point and what the sample says about it, for a person."""
    record, choice = result.record, result.choice
    lines = [
        f"department {department!r}: operating point version {record.version} is now active",
        f"  threshold {choice.point.threshold:.4f} (PNEUMONIA at or above), review band from "
        f"{choice.point.band_low:.4f} (NORMAL calls in the band are flagged near_threshold)",
        f"  sample: {choice.n_pneumonia} pneumonia + {choice.n_normal} normal films "
        f"({len(result.skipped)} unreadable, skipped); data sha256 {record.data_sha256[:16]}...",
        f"  on this sample: sensitivity {choice.sensitivity:.3f}, specificity {choice.specificity:.3f}, "
        f"review load {choice.review_load:.1%} of NORMAL calls",
        f"  missed (pneumonia called NORMAL, no flag): {choice.missed} of {choice.n_pneumonia} = "
        f"{choice.miss_rate:.3f}; 95% upper bound {choice.miss_rate_upper:.3f}; target {choice.miss_rate_target:g} "
        "(conformal risk control: expected miss rate on new films from the same site)",
        f"  model {record.model_version}; stored {record.created_at:%Y-%m-%d %H:%M} UTC; roll back with "
        f"`pneumoscreen calibration activate --department {department!r} --version N`",
    ]
    lines += [f"  skipped {line}" for line in result.skipped[:20]]
    return "\n".join(lines)
