"""Machine-learning models: image decoding, lung segmentation, the pneumonia classifier, training."""
