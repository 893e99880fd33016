"""har-tf: HAR (Cao et al., ICLR 2021) for Keras 3 / TensorFlow."""

from har_tf import callbacks, corruption, layers, models, regularizer, tau
from har_tf.har_model import HARModel, default_tap_layers

__version__ = "0.1.0"

__all__ = [
    "HARModel",
    "callbacks",
    "corruption",
    "default_tap_layers",
    "layers",
    "models",
    "regularizer",
    "tau",
]
