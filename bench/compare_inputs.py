"""Input size (64/128/224 px) x lung crop vs whole film, and an ImageNet backbone; writes JSON.

Run: .venv/bin/python bench/compare_inputs.py --data ../shared/data/kermany-train --epochs 3 \
         --out bench/results/compare_inputs.json [--only 224-whole 128-crop-mobilenet]
Each configuration trains `fit_classifier` (class weights, label smoothing, augmentation, warm-up +
cosine) for the same few epochs with BatchNorm momentum 0.9 (0.99 leaves the moving statistics
unsettled after 3 epochs), then reports patient-level validation AUC and sensitivity/specificity at
the shipped rule (threshold for validation sensitivity >= 0.99). `--only` runs the named
configurations and keeps the other runs already in --out.

"mobilenet" is transfer learning from ../shared/weights: Keras MobileNet v1 (alpha 0.25, ImageNet,
no top) on the crop repeated to 3 channels and scaled to [-1, 1], its BatchNorm layers frozen
(ImageNet statistics), all other weights fine-tuned, then the same pooling, dropout and logit head.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.calibration import Calibration, choose_threshold  # noqa: E402
from models.crop import CROP_FAILED, equalize, resize_batch  # noqa: E402
from models.segmenter import compiled, crop_lungs  # noqa: E402
from training.classifier import fit_classifier  # noqa: E402
from training.data import list_images, load_films, patient_split  # noqa: E402
from training.evaluate import binary_metrics  # noqa: E402

logger = logging.getLogger("compare_inputs")
# (name, input px, lung crop?, backbone)
CONFIGS = [("64-crop", 64, True, "scratch"), ("64-whole", 64, False, "scratch"),
           ("128-crop", 128, True, "scratch"), ("128-whole", 128, False, "scratch"),
           ("224-crop", 224, True, "scratch"), ("224-whole", 224, False, "scratch"),
           ("128-crop-mobilenet", 128, True, "mobilenet")]
MOBILENET = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def build_mobilenet(size: int):
    """MobileNet v1 0.25 with ImageNet weights on a 1-channel crop, frozen BatchNorm, one-logit head."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="crop")
    x = layers.Concatenate()([inputs, inputs, inputs])
    x = layers.Rescaling(2.0, offset=-1.0)(x)
    backbone = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=0.25, include_top=False,
                                            weights=str(MOBILENET))
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D(name="features")(backbone(x)))
    return keras.Model(inputs, layers.Dense(1, name="logit")(x), name="mobilenet_transfer")


def main() -> None:
    """Train and score each configuration in ORDER until the time budget is spent."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--segmenter", type=Path, default=Path("models/weights/segmenter.keras"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget-s", type=int, default=35 * 60, help="skip configurations starting after this")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=[c[0] for c in CONFIGS], help="run just these")
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
    if args.only and args.out.is_file():
        results["runs"] = [r for r in json.loads(args.out.read_text())["runs"] if r["name"] not in args.only]
    prep_s = time.monotonic() - started
    for name, size, crop, backbone in CONFIGS:
        if args.only and name not in args.only:
            continue
        if time.monotonic() - started - prep_s > args.budget_s:
            results["runs"].append({"name": name, "size": size, "crop": crop, "skipped": "time budget spent"})
            continue
        t0 = time.monotonic()
        if crop:
            x, boxes = crop_lungs(segment, films, size)
            fallbacks = int(sum(b.failure == CROP_FAILED for b in boxes))
        else:
            x, fallbacks = resize_batch(films, size), 0
        x = equalize(x)
        keras.utils.set_random_seed(0)
        model = fit_classifier(x[train], labels[train], x[val], labels[val], args.epochs, 0, bn_momentum=0.9,
                               model=build_mobilenet(size) if backbone == "mobilenet" else None)
        call = compiled(model)
        logits = np.concatenate([call(x[val][i:i + 128, ..., None]).numpy()[:, 0] for i in range(0, len(val), 128)])
        probs = Calibration.fit(logits, labels[val])(logits)
        threshold = choose_threshold(probs, labels[val], 0.99)
        run = {"name": name, "size": size, "crop": crop, "backbone": backbone, "crop_fallbacks": fallbacks,
               "params": int(model.count_params()), "train_s": round(time.monotonic() - t0),
               "threshold": threshold, "at_rule": binary_metrics(probs, labels[val], threshold)}
        logger.info("%s", run)
        results["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        del x, model
    results["runs"].sort(key=lambda r: [c[0] for c in CONFIGS].index(r["name"]))
    results["total_s"] = round(time.monotonic() - started)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
