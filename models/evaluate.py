"""Screening metrics (AUC, sensitivity, specificity, flag shares) and evaluation of a labelled folder."""
import logging
from pathlib import Path

import numpy as np

from models.imaging import decode_image
from models.train import list_images

logger = logging.getLogger(__name__)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted half."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    starts = np.r_[0, np.nonzero(np.diff(sorted_scores))[0] + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """AUC plus accuracy, sensitivity, specificity and confusion counts at `threshold`."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    called = probs >= threshold
    tp = int((called & (labels == 1)).sum())
    fn = int((~called & (labels == 1)).sum())
    tn = int((~called & (labels == 0)).sum())
    fp = int((called & (labels == 0)).sum())
    return {
        "auc": round(roc_auc(probs, labels), 4),
        "accuracy": round((tp + tn) / max(len(labels), 1), 4),
        "sensitivity": round(tp / max(tp + fn, 1), 4),
        "specificity": round(tn / max(tn + fp, 1), 4),
        "n": int(len(labels)),
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def evaluate_folder(data_dir: Path, screener, batch_size: int = 256) -> dict:
    """Screen every image of data_dir/{NORMAL,PNEUMONIA} and report metrics and flag shares."""
    paths, labels = list_images(Path(data_dir))
    probs, flagged, normal_calls = [], [], []
    for start in range(0, len(paths), batch_size):
        images = [decode_image(p.read_bytes()) for p in paths[start:start + batch_size]]
        for finding in screener.screen(images):
            probs.append(finding.probability)
            flagged.append(finding.flagged)
            normal_calls.append(finding.prediction == "NORMAL")
    probs, flagged, normal_calls = np.array(probs), np.array(flagged), np.array(normal_calls)
    metrics = binary_metrics(probs, labels, screener.threshold)
    missed = normal_calls & (labels == 1)
    metrics["fn_flagged_share"] = round(float(flagged[missed].mean()), 4) if missed.any() else None
    metrics["normal_calls_flagged_share"] = (
        round(float(flagged[normal_calls].mean()), 4) if normal_calls.any() else None)
    metrics["threshold"] = screener.threshold
    logger.info("evaluated %d images from %s: %s", len(labels), data_dir, metrics)
    return metrics
