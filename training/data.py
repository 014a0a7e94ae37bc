"""Kermany training data: the class folders, film loading as serving decodes, and the patient-level split."""
import logging
import re
from pathlib import Path

import numpy as np

from models.crop import squash
from models.imaging import decode_image

logger = logging.getLogger(__name__)

CLASSES = ("NORMAL", "PNEUMONIA")
_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
_IM = re.compile(r"IM-(\d+)-", re.IGNORECASE)


def patient_id(filename: str) -> str:
    """Patient key from a Kermany file name: personN_* -> 'pN', (NORMAL2-)IM-NNNN-* -> 'nNNNN'."""
    if match := _PERSON.search(filename):
        return f"p{int(match.group(1))}"
    if match := _IM.search(filename):
        return f"n{int(match.group(1))}"
    return f"file:{filename}"


def list_images(data_dir: Path) -> tuple[list[Path], np.ndarray]:
    """All images under data_dir/NORMAL and data_dir/PNEUMONIA with labels (1 = pneumonia)."""
    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        folder = Path(data_dir) / name
        if not folder.is_dir():
            raise FileNotFoundError(f"missing class folder {folder}")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        paths += found
        labels += [label] * len(found)
    return paths, np.array(labels, np.int32)


def load_films(paths: list[Path]) -> np.ndarray:
    """Decode files with decode_image (as serving does) and squash them to (N, 224, 224)."""
    return np.stack([squash(decode_image(path.read_bytes())) for path in paths])


def patient_split(paths: list[Path], labels: np.ndarray, val_share: float = 0.18,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train/val image indices, splitting patients (not images), stratified by class.

    Every training and calibration step uses the default seed, so all ensemble members share one split.
    """
    rng = np.random.default_rng(seed)
    patients = np.array([patient_id(p.name) for p in paths])
    val_patients: set[str] = set()
    for label in (0, 1):
        unique = np.unique(patients[labels == label])
        rng.shuffle(unique)
        val_patients.update(unique[: int(round(len(unique) * val_share))])
    is_val = np.array([p in val_patients for p in patients])
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]
