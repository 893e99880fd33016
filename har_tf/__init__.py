"""har-tf: HAR (Cao et al., ICLR 2021) for Keras 3 / TensorFlow."""

from har_tf import callbacks, corruption, held_out, label_issues, layers, models, regularizer, tau
from har_tf.classifier import HARClassifier
from har_tf.har_model import HARModel, default_tap_layers

__version__ = "0.1.0"

__all__ = [
    "HARClassifier",
    "HARModel",
    "callbacks",
    "corruption",
    "default_tap_layers",
    "held_out",
    "label_issues",
    "layers",
    "models",
    "regularizer",
    "tau",
]
