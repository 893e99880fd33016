"""The parameter-free "option A" shortcut of CIFAR ResNets (He et al., 2016)."""

import keras


@keras.saving.register_keras_serializable(package="har_tf")
class ShortcutA(keras.layers.Layer):
    """Spatial subsampling by `strides` plus zero-padding of channels.

    Matches the authors' `LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], ... planes // 4
    ...))`: the input (NHWC) keeps every `strides`-th row and column starting at 0, and
    `(out_channels - in_channels)` zero channels are split evenly before and after.

    Args:
      out_channels: channels of the output; at least the input's.
      strides: spatial subsampling factor.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, out_channels, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)
        self.strides = int(strides)

    def call(self, inputs):
        x = inputs[:, :: self.strides, :: self.strides, :]
        extra = self.out_channels - inputs.shape[-1]
        if extra < 0:
            raise ValueError(
                f"{self.name}: out_channels={self.out_channels} < input channels {inputs.shape[-1]}"
            )
        before = extra // 2
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [before, extra - before]])

    def compute_output_shape(self, input_shape):
        def sub(d):
            return None if d is None else -(-d // self.strides)

        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]), self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(out_channels=self.out_channels, strides=self.strides)
        return config
