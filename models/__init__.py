"""Serving the machine-learning models: image checks and decoding, lung crop, classifier ensemble, flags.

Training, recalibration and evaluation live in the top-level `training` package, which imports this one;
nothing here imports training.

TensorFlow is imported lazily, inside the functions that need it, and always after this package: every
process that runs the models gets oneDNN's kernels. TensorFlow turns them on by itself only on CPUs with
AVX-512 VNNI or newer; on an AVX2 CPU its own kernels ran the models at half the speed (bench/run, the model
card), and each host would round a film's probabilities differently. This sets a default for this process
and the ones it starts; an operator's own TF_ENABLE_ONEDNN_OPTS still wins.
"""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
