"""HAR's Jacobian regularizer R(x) from loss gradients w.r.t. hidden activations.

Pure TensorFlow functions; `HARModel` computes the gradients (double backprop) and
calls these. Shapes: each gradient is [B, ...] with examples on axis 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

AGGREGATIONS = ("official", "paper")


def at_least_float32(t: tf.Tensor) -> tf.Tensor:
    """Casts float16/bfloat16 up to float32 and leaves float32/float64 alone."""
    return tf.cast(t, tf.float32) if t.dtype.size < 4 else t


def squared_norms(grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Per-example squared Frobenius norms, one [B] tensor per layer.

    Computed in at least float32 whatever the activations' dtype (mixed precision),
    so that squares of small gradients do not underflow.
    """
    out = []
    for g in grads:
        g = at_least_float32(g)
        axes = list(range(1, g.shape.rank))
        out.append(tf.reduce_sum(tf.square(g), axis=axes) if axes else tf.square(g))
    return out


def penalty_from_squared_norms(
    sq: Sequence[tf.Tensor], *, aggregation: str = "official", epsilon: float = 1e-20
) -> tf.Tensor:
    """R_i for every example i of the batch, from each tap's `squared_norms`: a [B] tensor.

    Args:
      sq: per-example squared norms of the loss gradient w.r.t. each tapped
        activation, each [B], at least float32 (`squared_norms(grads)`).
      aggregation: "official" (authors' code): R_i = sum_j ||g_j[i]||_F.
        "paper" (Sec. 2.3): R_i = sqrt(sum_j ||g_j[i]||_F^2).
      epsilon: added under each square root so that the gradient of R stays finite
        where a norm is exactly 0 (e.g. an example whose loss is saturated).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not sq:
        raise ValueError("no squared norms given: the model has no tapped activations")
    if aggregation == "official":
        return tf.add_n([tf.sqrt(s + epsilon) for s in sq])
    return tf.sqrt(tf.add_n(sq) + epsilon)
