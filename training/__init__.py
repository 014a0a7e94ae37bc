"""Training, recalibration and evaluation of the models that models/ serves.

`python -m training --segmenter|--classifier|--recalibrate --data DIR --out WEIGHTS` (training/__main__.py);
`pneumoscreen train`, `train-segmenter` and `evaluate` call training.commands, training.segmenter and
training.evaluate. Training imports models/ (decoding, cropping, the Screener) so it sees films exactly
as serving does; models/ never imports training.
"""
