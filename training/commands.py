"""What `pneumoscreen train` and `python -m training --classifier` run: train a member, then recalibrate,
then write the drift reference; and `--recalibrate` alone (with its reference)."""
import logging
import sys
import time
from pathlib import Path

from training.classifier import train_classifier
from training.recalibrate import recalibrate
from training.reference import write_reference

logger = logging.getLogger(__name__)


def train_member(data_dir: Path, out_dir: Path, segmenter_path: Path, epochs: int = 16, member: int = 0,
                 command: str | None = None) -> dict:
    """Train ensemble member `member` into out_dir, then recalibrate the whole ensemble; classifier.json's meta.

    Raises ValueError when `member` would leave a gap in the ensemble.
    """
    command = command or " ".join(sys.argv)
    started = time.monotonic()
    logger.info("train classifier member %d on %s into %s", member, data_dir, out_dir)
    train_classifier(data_dir, out_dir, segmenter_path, epochs=epochs, member=member, command=command)
    logger.info("then recalibrate the ensemble in %s (%.0fs so far)", out_dir, time.monotonic() - started)
    return recalibrate_bundle(data_dir, out_dir, command)


def recalibrate_bundle(data_dir: Path, out_dir: Path, command: str) -> dict:
    """Calibration, threshold, flag policy and scope gate from the serving path, then the drift reference."""
    meta = recalibrate(data_dir, out_dir, command=command)
    logger.info("then: the drift reference (validation films through the recalibrated bundle)")
    write_reference(data_dir, out_dir, command)
    return meta
