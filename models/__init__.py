"""Serving the machine-learning models: image checks and decoding, lung crop, classifier ensemble, flags.

Training, recalibration and evaluation live in the top-level `training` package, which imports this one;
nothing here imports training.
"""
