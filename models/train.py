"""Training data loading, the patient-level split, and a `python -m models.train` entry point."""
import argparse
import logging
import re
import shlex
import sys
import time
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


def main(argv: list[str] | None = None) -> None:
    """Train the segmenter or the classifier from the command line."""
    parser = argparse.ArgumentParser(prog="python -m models.train", description=main.__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--segmenter", action="store_true")
    what.add_argument("--classifier", action="store_true")
    what.add_argument("--recalibrate", action="store_true",
                      help="re-derive calibration, threshold, flags and scope.npz for the weights in --out")
    parser.add_argument("--data", type=Path, required=True, help="lung-masks/ or kermany-train/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--segmenter-path", type=Path, help="segmenter.keras (classifier only)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0, help="segmenter only: the random seed")
    parser.add_argument("--member", type=int, default=0,
                        help="classifier only: ensemble member to train (0 starts a new ensemble; "
                             "N > 0 adds classifier-N.keras, seeded with N)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join(["python", "-m", "models.train", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    if args.segmenter:
        from models.segmenter import train_segmenter

        meta = train_segmenter(args.data, args.out, epochs=args.epochs or 6, seed=args.seed,
                               command=command)
    elif args.recalibrate:
        from models.recalibrate import recalibrate

        meta = recalibrate(args.data, args.out, command=command)
    else:
        from models.classifier import train_classifier

        segmenter_path = args.segmenter_path or args.out / "segmenter.keras"
        meta = train_classifier(args.data, args.out, segmenter_path, epochs=args.epochs or 16,
                                member=args.member, command=command)
    logger.info("done in %.0fs: %s", time.monotonic() - started, meta)


if __name__ == "__main__":
    main()
