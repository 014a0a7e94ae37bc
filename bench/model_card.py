"""Regenerate the model card's figures (docs/img/*.png) and numbers (bench/results/model_card.json).

Run: .venv/bin/pip install -e ".[docs]" && .venv/bin/python bench/model_card.py --data ../shared/data
Uses the shipped bundle on the patient-level validation split (the same split training used), the
perturbations of training/recalibrate.py, and bench/results/scope_eval.json (bench/scope_eval.py).
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.calibration import sigmoid  # noqa: E402
from models.heatmap import colorize, film_heatmap  # noqa: E402
from models.screener import Screener  # noqa: E402
from training.data import list_images, load_films, patient_split  # noqa: E402
from training.evaluate import binary_metrics  # noqa: E402
from training.recalibrate import PERTURBATIONS, perturb, run_all  # noqa: E402

logger = logging.getLogger("model_card")
IMG = ROOT / "docs" / "img"


def roc_points(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds."""
    order = np.argsort(-probs)
    tps, fps = np.cumsum(labels[order] == 1), np.cumsum(labels[order] == 0)
    return np.r_[0, fps / max(fps[-1], 1)], np.r_[0, tps / max(tps[-1], 1)]


def figures(plt, probs, raw_probs, labels, threshold, perturbed, scope, examples) -> None:
    """Write roc.png, calibration.png, confusion.png, threshold-robustness.png, scope.png, heatmaps.png."""
    fpr, tpr = roc_points(probs, labels)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=90)
    ax.plot(fpr, tpr, lw=1.5)
    for t, marker in ((threshold, "o"), (0.5, "s")):
        m = binary_metrics(probs, labels, t)
        ax.plot(1 - m["specificity"], m["sensitivity"], marker, label=f"threshold {t:g}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"Validation ROC (AUC {binary_metrics(probs, labels, 0.5)['auc']:.4f})")
    ax.legend(loc="lower right")
    fig.tight_layout(), fig.savefig(IMG / "roc.png"), plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4), dpi=90)
    for p, name in ((raw_probs, "raw: sigmoid(logit)"), (probs, "Platt-scaled")):
        # Each curve gets its own decile edges: the raw scores sit elsewhere on [0, 1].
        edges = np.quantile(p, np.linspace(0, 1, 11))
        bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
        ax.plot([p[bins == b].mean() for b in range(10)], [labels[bins == b].mean() for b in range(10)], "o-",
                label=name, ms=3)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed pneumonia share",
           title="Calibration (10 quantile bins)")
    ax.legend(loc="upper left")
    fig.tight_layout(), fig.savefig(IMG / "calibration.png"), plt.close(fig)

    c = binary_metrics(probs, labels, threshold)["confusion"]
    fig, ax = plt.subplots(figsize=(3.4, 3), dpi=90)
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > grid.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["NORMAL", "PNEUMONIA"], yticklabels=["NORMAL", "PNEUMONIA"],
           xlabel="call", ylabel="truth", title=f"Validation, threshold {threshold:g}")
    fig.tight_layout(), fig.savefig(IMG / "confusion.png"), plt.close(fig)

    grid_t = np.linspace(0.01, 0.5, 50)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), dpi=90)
    for name, p in [("clean", probs), *perturbed.items()]:
        ms = [binary_metrics(p, labels, t) for t in grid_t]
        style = dict(lw=2, color="k") if name == "clean" else dict(lw=1)
        axes[0].plot(grid_t, [m["sensitivity"] for m in ms], label=name, **style)
        axes[1].plot(grid_t, [m["specificity"] for m in ms], label=name, **style)
    for ax, name, floor in ((axes[0], "sensitivity", 0.98), (axes[1], "specificity", 0.90)):
        ax.axvline(threshold, color="r", ls="--", lw=1)
        ax.axhline(floor, color="grey", ls=":", lw=1)
        ax.set(xlabel="threshold (calibrated probability)", ylabel=name, xscale="log")
    axes[0].set_ylim(0.9, 1.0)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Validation under shift-simulating perturbations (red: shipped threshold)")
    fig.tight_layout(), fig.savefig(IMG / "threshold-robustness.png"), plt.close(fig)

    groups = scope["groups"]
    names = list(groups)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.22 * len(names)), dpi=90)
    ax.barh(names, [groups[n]["share_after"] for n in names], color="tab:orange")
    for i, n in enumerate(names):
        ax.text(0.01, i, f"{groups[n]['share_after']:.1%} of {groups[n]['n']}", va="center", fontsize=8)
    ax.set(xlim=(0, 1), xlabel="share flagged out_of_scope", title="Out-of-scope gate")
    ax.invert_yaxis()
    fig.tight_layout(), fig.savefig(IMG / "scope.png"), plt.close(fig)

    fig, axes = plt.subplots(1, len(examples), figsize=(2.2 * len(examples), 2.5), dpi=90)
    for ax, (film, finding, label) in zip(axes, examples):
        heat = colorize(film_heatmap(finding.heatmap, finding.crop_box, film.shape, max_side=max(film.shape)))
        # The workstation's screen blend at 45% opacity.
        gray = np.repeat(film[..., None], 3, axis=2)
        ax.imshow(1 - (1 - gray) * (1 - 0.45 * heat / 255.0))
        ax.set_title(f"{label}: p={finding.probability:.3f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout(), fig.savefig(IMG / "heatmaps.png"), plt.close(fig)


def main() -> None:
    """Score validation clean and perturbed, then draw and save."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    screener = Screener.load(args.weights)
    paths, labels = list_images(args.data / "kermany-train")
    _, val = patient_split(paths, labels)
    films, y = load_films([paths[i] for i in val]), labels[val]
    logits = run_all(screener, films).logit
    probs, raw = screener.calibration(logits), sigmoid(logits)
    perturbed = {name: screener.calibration(run_all(screener, perturb(name, films)).logit)
                 for name in PERTURBATIONS}
    scope = json.loads((ROOT / "bench" / "results" / "scope_eval.json").read_text())
    picks = [int(np.nonzero(y == 0)[0][5]), int(np.nonzero(y == 1)[0][5]), int(np.nonzero(y == 1)[0][300]),
             int(np.nonzero(y == 0)[0][100])]
    examples = [(films[i], f, "PNEUMONIA" if y[i] else "NORMAL")
                for i, f in zip(picks, screener.screen([films[i] for i in picks]))]
    IMG.mkdir(parents=True, exist_ok=True)
    figures(plt, probs, raw, y, screener.threshold, perturbed, scope, examples)
    numbers = {"model_version": screener.version, "threshold": screener.threshold,
               "validation": binary_metrics(probs, y, screener.threshold),
               "perturbed": {n: binary_metrics(p, y, screener.threshold) for n, p in perturbed.items()}}
    (ROOT / "bench" / "results" / "model_card.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers["validation"]))


if __name__ == "__main__":
    main()
