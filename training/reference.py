"""The drift reference: the shipped bundle's outputs and image statistics on the validation films
(models.drift.Reference, saved as reference.json beside the weights). Written after every recalibration."""
import logging
import time
from pathlib import Path

import numpy as np

from models.drift import FEATURES, REFERENCE_FILE, Reference
from models.scope import STATS
from models.screener import Screener
from training.data import list_images, load_films, patient_split
from training.recalibrate import run_all

logger = logging.getLogger(__name__)


def fit_reference(screener: Screener, films: np.ndarray, command: str = "") -> Reference:
    """The reference over squashed (N, 224, 224) films, through the serving path (gate included)."""
    out = run_all(screener, films)
    features = {"probability": out.probability,
                **{name: out.stats[:, STATS.index(name)] for name in FEATURES if name != "probability"}}
    out_of_scope = out.scope["score"] >= 1.0 if out.scope is not None else np.zeros(len(out), bool)
    return Reference.fit(screener.version, features, out.probability >= screener.threshold, out_of_scope, command)


def write_reference(data_dir: Path, weights_dir: Path, command: str) -> dict:
    """Fit the reference on the validation split of data_dir and save it into weights_dir; returns its summary."""
    started = time.monotonic()
    screener = Screener.load(weights_dir)
    paths, labels = list_images(Path(data_dir))
    _, val = patient_split(paths, labels)
    reference = fit_reference(screener, load_films([paths[i] for i in val]), command)
    reference.save(Path(weights_dir) / REFERENCE_FILE)
    logger.info("drift reference on %d validation films in %.0fs: call rate %.3f, out of scope %.3f", reference.n,
                time.monotonic() - started, reference.call_rate, reference.out_of_scope_rate)
    return {"n": reference.n, "call_rate": reference.call_rate, "out_of_scope_rate": reference.out_of_scope_rate}
