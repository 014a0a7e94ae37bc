"""Input size (64/128/224 px) x lung crop vs whole film, same short training recipe; writes JSON.

Run: .venv/bin/python bench/compare_inputs.py --data ../shared/data/kermany-train --epochs 3 \
         --out bench/results/compare_inputs.json
Each configuration trains `fit_classifier` (class weights, label smoothing, augmentation, warm-up +
cosine) for the same few epochs with BatchNorm momentum 0.9 (0.99 leaves the moving statistics
unsettled after 3 epochs), then reports patient-level validation AUC and sensitivity/specificity at
the shipped rule (threshold for validation sensitivity >= 0.99) and at 0.5.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.calibration import choose_threshold, fit_temperature, sigmoid  # noqa: E402
from models.classifier import fit_classifier  # noqa: E402
from models.crop import CROP_FAILED, equalize, resize_batch  # noqa: E402
from models.evaluate import binary_metrics  # noqa: E402
from models.segmenter import compiled, crop_lungs  # noqa: E402
from models.train import list_images, load_films, patient_split  # noqa: E402

logger = logging.getLogger("compare_inputs")
ORDER = [(64, True), (64, False), (128, True), (128, False), (224, True), (224, False)]


def main() -> None:
    """Train and score each configuration in ORDER until the time budget is spent."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--segmenter", type=Path, default=Path("models/weights/segmenter.keras"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget-s", type=int, default=35 * 60, help="skip configurations starting after this")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import keras

    started = time.monotonic()
    paths, labels = list_images(args.data)
    films = load_films(paths)
    train, val = patient_split(paths, labels)
    segment = compiled(keras.models.load_model(args.segmenter, compile=False))
    results = {"epochs": args.epochs, "bn_momentum": 0.9, "n_train": int(len(train)), "n_val": int(len(val)),
               "rule": "threshold = highest with val sensitivity >= 0.99 (calibrated), as shipped", "runs": []}
    prep_s = time.monotonic() - started
    for size, crop in ORDER:
        if time.monotonic() - started - prep_s > args.budget_s:
            results["runs"].append({"size": size, "crop": crop, "skipped": "time budget spent"})
            continue
        t0 = time.monotonic()
        if crop:
            x, boxes = crop_lungs(segment, films, size)
            fallbacks = int(sum(b.failure == CROP_FAILED for b in boxes))
        else:
            x, fallbacks = resize_batch(films, size), 0
        x = equalize(x)
        keras.utils.set_random_seed(0)
        model = fit_classifier(x[train], labels[train], x[val], labels[val], args.epochs, 0, bn_momentum=0.9)
        call = compiled(model)
        logits = np.concatenate([call(x[val][i:i + 128, ..., None]).numpy()[:, 0] for i in range(0, len(val), 128)])
        probs = sigmoid(logits / fit_temperature(logits, labels[val]))
        threshold = choose_threshold(probs, labels[val], 0.99)
        run = {"size": size, "crop": crop, "crop_fallbacks": fallbacks, "params": int(model.count_params()),
               "train_s": round(time.monotonic() - t0), "threshold": threshold,
               "at_rule": binary_metrics(probs, labels[val], threshold),
               "at_0.5": binary_metrics(probs, labels[val], 0.5)}
        logger.info("%s", run)
        results["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        del x, model
    results["total_s"] = round(time.monotonic() - started)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
