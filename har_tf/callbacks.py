"""Keras callbacks for HAR training schedules."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from har_tf import tau as tau_lib


class DeferredReweighting(keras.callbacks.Callback):
    """Deferred re-weighting (DRW, Cao et al. 2019): class-balanced loss weights
    from `start_epoch` on, unweighted before. With HAR this is HAR-DRW.

    The authors start DRW at the first learning-rate drop (epoch 80 of 120). The
    weights follow `har_tf.tau.class_balanced_weights` and are applied by
    `HARModel.set_class_weights` (PyTorch's weighted-mean semantics). The state is
    set at every epoch's start from the epoch number alone, so a resumed run gets the
    right weights.

    Args:
      class_counts: [C] training examples per class.
      start_epoch: first epoch (0-based) trained with the weights.
      beta: the class-balanced beta (authors: 0.9999).

    Example:
    ```python
    model.fit(ds, epochs=120, callbacks=[DeferredReweighting(counts, start_epoch=80)])
    ```
    """

    def __init__(self, class_counts: Sequence[int], *, start_epoch: int, beta: float = 0.9999):
        super().__init__()
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.weights = tau_lib.class_balanced_weights(class_counts, beta=beta)
        self.start_epoch = int(start_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        active = epoch >= self.start_epoch
        self.model.set_class_weights(self.weights if active else None)
