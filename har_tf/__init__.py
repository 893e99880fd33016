"""har-tf: HAR (Cao et al., ICLR 2021) for Keras 3 / TensorFlow."""

# Before anything imports TensorFlow: its oneDNN switch is read only when it loads.
from har_tf.onednn import enable_onednn

enable_onednn()

from har_tf import (  # noqa: E402
    callbacks,
    corruption,
    held_out,
    label_issues,
    layers,
    models,
    regularizer,
    tau,
)
from har_tf.classifier import HARClassifier  # noqa: E402
from har_tf.har_model import HARModel, default_tap_layers  # noqa: E402

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
