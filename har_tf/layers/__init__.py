from har_tf.layers.batch_normalization import BatchNormalization
from har_tf.layers.channel_affine import ChannelAffine, pre_affine_batch_norm
from har_tf.layers.conversion import convert_batch_norms, convert_relus
from har_tf.layers.relu import ReLU
from har_tf.layers.shortcut_a import ShortcutA

__all__ = [
    "BatchNormalization",
    "ChannelAffine",
    "ReLU",
    "ShortcutA",
    "convert_batch_norms",
    "convert_relus",
    "pre_affine_batch_norm",
]
