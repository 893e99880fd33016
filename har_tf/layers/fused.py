"""TensorFlow's fused batch-norm kernels as per-channel building blocks (CPU, float32).

On CPU, TensorFlow runs FusedBatchNormV3 and FusedBatchNormGradV3 as single oneDNN
kernels. Elementwise work is memory-bound here, so one kernel that reads a tensor
once beats the chain of ops (each reading and writing a whole tensor) that computes
the same thing (timings: docs/PERFORMANCE.md, "The changes, one at a time").

Used where `fusable` holds: float32, channels on the last axis, and a process without
GPUs or TPUs: their training-mode kernels keep other quantities in the reserve
spaces (cuDNN keeps the inverse standard deviation), and there XLA can fuse the
plain ops instead. Timed on CPU only.
"""

import numpy as np
import tensorflow as tf

# The kernels below are called with mean 0 and a variance that makes
# rsqrt(variance + epsilon) exactly 1 in float32, so that x_hat = x. epsilon is
# cuDNN's smallest allowed (tf.nn.fused_batch_norm raises smaller ones to it): an
# inference graph traced here (a SavedModel with ChannelAffine) then holds no
# epsilon that a GPU kernel refuses. Not tested on a GPU (none here).
_EPSILON = 1.001e-5
_UNIT_VARIANCE = float(np.float32(1.0) - np.float32(_EPSILON))
assert np.float32(_UNIT_VARIANCE) + np.float32(_EPSILON) == np.float32(1.0)


def fusable(t) -> bool:
    """Whether a per-channel op over `t` (channels last) can run on the fused kernels."""
    rank = t.shape.rank
    return (
        t.dtype == tf.float32
        and rank is not None
        and rank >= 2
        and t.shape[-1] is not None
        and _cpu_only()
    )


def _cpu_only() -> bool:
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def statically_zero(t) -> bool:
    """Whether `t` is known, when tracing, to be all zeros (an unused output's cotangent)."""
    if t is None:
        return True
    value = tf.get_static_value(t)
    return value is not None and not np.any(value)


def _as_4d(t):
    """`t` [d0, ..., C] as the [N, H, W, C] the fused kernels take (a free reshape)."""
    rank = t.shape.rank
    if rank == 4:
        return t
    shape = tf.shape(t)
    middle = tf.reduce_prod(shape[1:-1]) if rank > 2 else 1
    return tf.reshape(t, tf.stack([shape[0], middle, 1, shape[-1]]))


def normalize(x, epsilon):
    """(y, mean, biased variance) of training-mode BN over all axes but the last.

    One FusedBatchNormV3. The statistics keep `x`'s rank (keepdims).
    """
    channels = x.shape[-1]
    out = tf.raw_ops.FusedBatchNormV3(
        x=_as_4d(x),
        scale=tf.ones([channels]),
        offset=tf.zeros([channels]),
        mean=tf.zeros([0]),
        variance=tf.zeros([0]),
        epsilon=epsilon,
        is_training=True,
    )
    # batch_variance is Bessel-corrected; reserve_space_2 is the biased variance the
    # kernel normalized with, as Keras's moving statistics take it.
    stats_shape = [1] * (x.shape.rank - 1) + [channels]
    return (
        tf.reshape(out.y, tf.shape(x)),
        tf.reshape(out.batch_mean, stats_shape),
        tf.reshape(out.reserve_space_2, stats_shape),
    )


def _grad(dy, x, scale, is_training):
    """FusedBatchNormGradV3 with mean 0 and variance + epsilon = 1, so x_hat = x.

    Returns the kernel's (x_backprop, sum(dy * x), sum(dy)), the sums per channel:
    - training: x_backprop = scale * (dy - M(dy) - x M(dy x));
    - inference: x_backprop = scale * dy.
    """
    channels = dy.shape[-1]
    out = tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=_as_4d(dy),
        x=_as_4d(x),
        scale=tf.reshape(scale, [channels]),
        reserve_space_1=tf.zeros([channels]),
        reserve_space_2=tf.fill([channels], _UNIT_VARIANCE),
        reserve_space_3=tf.zeros([0]),
        epsilon=_EPSILON,
        is_training=is_training,
    )
    return tf.reshape(out.x_backprop, tf.shape(dy)), out.scale_backprop, out.offset_backprop


def jacobian_product(dy, y, rstd):
    """(J dy, sum(dy), sum(dy y)) of the BN backward rstd * (dy - M(dy) - y M(dy y)).

    One kernel: with x = y, mean 0 and variance + epsilon = 1 the kernel's x_hat is y
    and its factor is the scale, here rstd; its two sums (per channel, shaped like
    rstd) come with it.
    """
    dx, sum_dy_y, sum_dy = _grad(dy, y, rstd, is_training=True)
    stats_shape = tf.shape(rstd)
    return dx, tf.reshape(sum_dy, stats_shape), tf.reshape(sum_dy_y, stats_shape)


def affine(x, gamma, beta):
    """gamma * x + beta per channel (last axis); fused where `fusable(x)`."""
    if fusable(x) and gamma.dtype == x.dtype and beta.dtype == x.dtype:
        return _fused_affine(x, gamma, beta)
    return x * gamma + beta


@tf.custom_gradient
def _fused_affine(x, gamma, beta):
    """gamma * x + beta per channel (last axis) by one inference-mode FusedBatchNormV3.

    Differentiable twice: the backward is one kernel giving (gamma * da, sum(da x),
    sum(da)), and that op's own gradient is written out below (HAR's outer tape).
    """
    channels = x.shape[-1]
    out = tf.raw_ops.FusedBatchNormV3(
        x=_as_4d(x),
        scale=gamma,
        offset=beta,
        mean=tf.zeros([channels]),
        variance=tf.fill([channels], _UNIT_VARIANCE),
        epsilon=_EPSILON,
        is_training=False,
    )

    def backward(da):
        return _affine_backward(da, x, gamma)

    return tf.reshape(out.y, tf.shape(x)), backward


@tf.custom_gradient
def _affine_backward(da, x, gamma):
    dx, d_gamma, d_beta = _grad(da, x, gamma, is_training=False)

    def second_order(c_dx, c_gamma, c_beta):
        # dx = gamma da, d_gamma = sum(da x), d_beta = sum(da): linear in da. The
        # cotangent of dx reaches da as gamma c_dx and gamma as sum(c_dx da): one kernel.
        d_da, d_gamma_2, _ = _grad(c_dx, da, gamma, is_training=False)
        d_x = None
        if not statically_zero(c_gamma):
            d_da = d_da + x * c_gamma
            d_x = da * c_gamma
        if not statically_zero(c_beta):
            d_da = d_da + c_beta
        return d_da, d_x, d_gamma_2

    return (dx, d_gamma, d_beta), second_order
