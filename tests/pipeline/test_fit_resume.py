"""`modeling.fit` killed after an epoch and resumed ends with exactly the weights of an
uninterrupted fit, for a dataset whose length tf.data knows as for one whose length it
does not (the pipeline's TFRecords; `test_orchestration` kills a whole pipeline).

The reference is the uninterrupted fit itself; the kill is an exception raised after
the epoch's checkpoint is written, as a SIGKILL between epochs would leave it.
"""

import os

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from pipeline.training import modeling

EPOCHS = 3


class _Killed(Exception):
    pass


class _KillAfter(keras.callbacks.Callback):
    """Stops the fit after `epochs` epochs, once their checkpoint is written (as the
    next epoch begins: `fit` runs its checkpoint callback after the caller's)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epochs:
            raise _Killed


def _dataset(known_length: bool):
    x = np.random.RandomState(0).randn(96, 5).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if not known_length:
        ds = ds.filter(lambda *_: True)
    # Reshuffled per iterator from a fixed seed: epoch k's order is the k-th iterator's.
    return ds.shuffle(96, seed=3, reshuffle_each_iteration=True).batch(16)


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit(out_dir, known_length, callbacks=()):
    section = ml_collections.ConfigDict(
        dict(epochs=EPOCHS, verbose=0, deterministic=True, strategy="default")
    )
    model = _model()
    ds = _dataset(known_length)  # after the seed: the same dataset seeds every time
    os.makedirs(out_dir, exist_ok=True)
    modeling.fit(model, ds, section, out_dir=out_dir, callbacks=list(callbacks), tensorboard=False)
    return model


@pytest.mark.parametrize("known_length", [True, False], ids=["known-length", "unknown-length"])
@pytest.mark.parametrize("killed_after", [1, 2])
def test_a_resumed_fit_ends_with_the_uninterrupted_weights(tmp_path, known_length, killed_after):
    assert (int(_dataset(True).cardinality()), int(_dataset(False).cardinality())) == (6, -2)
    plain = _fit(str(tmp_path / "plain"), known_length)
    out = str(tmp_path / "resumed")
    with pytest.raises(_Killed):
        _fit(out, known_length, callbacks=[_KillAfter(killed_after)])
    assert sorted(os.listdir(os.path.join(out, modeling.CHECKPOINTS))) == [
        f"epoch-{killed_after:04d}.weights.h5",
        modeling.CHECKPOINT_HISTORY,
    ]
    resumed = _fit(out, known_length)
    for a, b in zip(plain.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_epoch_steps_is_the_known_number_of_batches_only():
    assert modeling.epoch_steps(_dataset(True)) == 6
    assert modeling.epoch_steps(_dataset(False)) is None
    assert modeling.epoch_steps(_dataset(True).repeat()) is None  # infinite
