"""Screening metrics (AUC, sensitivity, specificity, flag shares) and evaluation of a labelled folder."""
import logging
from pathlib import Path

import numpy as np

from models.reasons import FlagReason
from models.screener import decode_film
from training.data import list_images

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


def evaluate_folder(data_dir: Path, screener, batch_size: int = 64) -> dict:
    """Screen every image of data_dir/{NORMAL,PNEUMONIA}; metrics, flag shares by reason, out-of-scope share."""
    paths, labels = list_images(Path(data_dir))
    if not len(paths):
        raise ValueError(f"no images under {data_dir}/NORMAL or {data_dir}/PNEUMONIA")
    findings = []
    for start in range(0, len(paths), batch_size):
        findings += screener.screen([decode_film(p.read_bytes()) for p in paths[start:start + batch_size]])
    probs = np.array([f.probability for f in findings])
    reasons = [set(f.reasons) for f in findings]
    metrics = binary_metrics(probs, labels, screener.threshold)
    normal_calls = probs < screener.threshold
    missed = normal_calls & (labels == 1)
    flagged = np.array([bool(r) for r in reasons])

    def share(mask: np.ndarray, among: np.ndarray) -> float | None:
        return round(float(mask[among].mean()), 4) if among.any() else None

    metrics.update({
        "threshold": screener.threshold, "model_version": screener.version,
        "fn_flagged_share": share(flagged, missed), "normal_calls_flagged_share": share(flagged, normal_calls),
        "by_reason": {reason.value: {"fn_share": share(has, missed), "normal_calls_share": share(has, normal_calls),
                               "all_share": share(has, np.ones(len(has), bool))}
                      for reason in sorted(set().union(*reasons))
                      for has in [np.array([reason in r for r in reasons])]},
        "out_of_scope_share": share(np.array([FlagReason.OUT_OF_SCOPE in r for r in reasons]),
                                    np.ones(len(probs), bool)),
    })
    logger.info("evaluated %d images from %s: %s", len(labels), data_dir, metrics)
    return metrics


def format_report(metrics: dict) -> str:
    """The evaluate_folder() result as a few lines of text."""
    c = metrics["confusion"]
    lines = [
        f"model {metrics['model_version']}, threshold {metrics['threshold']}, {metrics['n']} images",
        f"AUC {metrics['auc']:.4f}  accuracy {metrics['accuracy']:.4f}  "
        f"sensitivity {metrics['sensitivity']:.4f}  specificity {metrics['specificity']:.4f}",
        "confusion (rows truth, columns call):     NORMAL  PNEUMONIA",
        f"  NORMAL                                 {c['tn']:6d}  {c['fp']:9d}",
        f"  PNEUMONIA                              {c['fn']:6d}  {c['tp']:9d}",
        f"false negatives flagged: {metrics['fn_flagged_share']}  NORMAL calls flagged: "
        f"{metrics['normal_calls_flagged_share']}  out_of_scope: {metrics['out_of_scope_share']}",
    ]
    for reason, shares in metrics["by_reason"].items():
        lines.append(f"  {reason}: {shares['fn_share']} of FNs, {shares['normal_calls_share']} of NORMAL calls, "
                     f"{shares['all_share']} of all")
    return "\n".join(lines)
