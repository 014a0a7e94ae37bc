"""What `pneumoscreen train` and `python -m training --classifier` run: train a member, then recalibrate."""
import logging
import sys
import time
from pathlib import Path

from training.classifier import train_classifier
from training.recalibrate import recalibrate

logger = logging.getLogger(__name__)


def train_member(data_dir: Path, out_dir: Path, segmenter_path: Path, epochs: int = 16, member: int = 0,
                 command: str | None = None) -> dict:
    """Train ensemble member `member` into out_dir, then recalibrate the whole ensemble; classifier.json's meta.

    Raises ValueError when `member` would leave a gap in the ensemble.
    """
    command = command or " ".join(sys.argv)
    started = time.monotonic()
    logger.info("step 1/2: train classifier member %d on %s into %s", member, data_dir, out_dir)
    train_classifier(data_dir, out_dir, segmenter_path, epochs=epochs, member=member, command=command)
    # Calibration, threshold, flag policy and scope gate come from the serving path over the same data.
    logger.info("step 2/2: recalibrate the ensemble in %s (%.0fs so far)", out_dir, time.monotonic() - started)
    return recalibrate(data_dir, out_dir, command=command)
