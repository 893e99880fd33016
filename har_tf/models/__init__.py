from har_tf.models.applications import bn_tap_layers, inception_resnet_v2, resnet50
from har_tf.models.lstm import imdb_bilstm, rnn_tap_layers
from har_tf.models.mlp import mlp, mlp_tap_layers
from har_tf.models.resnet import block_output_layers, cifar_resnet

__all__ = [
    "block_output_layers",
    "bn_tap_layers",
    "cifar_resnet",
    "imdb_bilstm",
    "inception_resnet_v2",
    "mlp",
    "mlp_tap_layers",
    "resnet50",
    "rnn_tap_layers",
]
