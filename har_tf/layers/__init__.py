from har_tf.layers.batch_normalization import BatchNormalization, convert_batch_norms
from har_tf.layers.channel_affine import ChannelAffine, pre_affine_batch_norm
from har_tf.layers.relu import ReLU
from har_tf.layers.shortcut_a import ShortcutA

__all__ = [
    "BatchNormalization",
    "ChannelAffine",
    "ReLU",
    "ShortcutA",
    "convert_batch_norms",
    "pre_affine_batch_norm",
]
