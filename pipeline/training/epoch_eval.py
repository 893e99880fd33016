"""Test-split metrics after every training epoch, for the best-epoch figure.

The authors report each run's best test accuracy over all epochs, i.e. an epoch
selected on the test set. To report that figure (clearly labelled) beside the
final-epoch one, the train stage runs `TestSetMonitor` after every epoch: one
inference pass over the test split whose results are added to the epoch's logs, so
that history.json, the per-epoch resume checkpoints and TensorBoard all carry them.
The evaluate stage then picks the best epoch from history.json.

With config.eval.per_epoch_every = k > 1 the passes (test, validation, memorization)
run after every k-th epoch and after the last only: on a small training set with a
long schedule they cost more than the training itself. The other epochs' entries are
null in history.json, and the best epoch is then the best of the evaluated ones.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import stage
from pipeline.data import datasets, validation
from pipeline.training import modeling

PREFIX = "test_"
TEST_ACCURACY = PREFIX + "accuracy"
TEST_TOP5 = PREFIX + "top5"
TOP_K = 5


def class_accuracy_key(c: int) -> str:
    """The history key of class c's per-epoch test accuracy."""
    return f"{PREFIX}class_{c}_accuracy"


def is_class_key(key: str) -> bool:
    """Whether a history key is a per-class accuracy (test, validation or fit split;
    one per class: too many for a panel each in the training curves)."""
    return any(key.startswith(p + "class_") for p in (PREFIX, "val_", "fit_")) and key.endswith(
        "_accuracy"
    )


def is_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether the per-epoch passes run after (0-based) `epoch` of `epochs`: after
    every `every`-th epoch and always after the last (config.eval.per_epoch_every),
    so that the final-epoch figures never depend on `every`."""
    return (epoch + 1) % every == 0 or epoch + 1 >= epochs


def check_every(every) -> int:
    """config.eval.per_epoch_every as an int >= 1, or a PipelineError naming it."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise stage.PipelineError(
            f"config.eval.per_epoch_every must be an integer >= 1 (1 = after every "
            f"epoch), got {every!r}"
        )
    return every


class _PeriodicPass(keras.callbacks.Callback):
    """Runs `evaluate()` into the logs after the epochs `is_due` names; the other
    epochs' logs lack its keys (null in history.json: modeling.finish_fit)."""

    def __init__(self, every: int = 1, epochs: int | None = None):
        super().__init__()
        self.every = check_every(every)
        self.epochs = epochs

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        epochs = self.epochs if self.epochs is not None else self.params.get("epochs", 0)
        if is_due(epoch, self.every, epochs):
            # Keras hands every callback the same logs dict: later ones see these keys.
            logs.update(self.evaluate())


class TestSetMonitor(_PeriodicPass):
    """Adds test-split metrics to the epoch's logs, computed in inference mode, after
    every `every`-th epoch and the last (every epoch by default).

    Writes `test_accuracy` (top-1), `test_top5` (only with more than TOP_K classes:
    with fewer it is 1 by definition) and `test_class_<c>_accuracy` for every class c
    that has test examples (a class without any has no accuracy; leaving its key out
    keeps history.json finite). Predictions break ties by the lower class index
    (tf.math.top_k is stable), as evaluate's numpy metrics do, so the last epoch's
    figures equal the final-epoch report's for the same batches.

    It reads no random state and updates no variable (BatchNormalization runs in
    inference mode), so training follows the same trajectory with or without it.
    Pass it before EpochCheckpoint (modeling.fit appends that one after the
    callbacks it is given) so that the checkpointed history records its entries.

    Args:
      dataset: (image, label) batches of the test split, iterated once per pass.
      num_classes: C.
      every, epochs: the pass runs after every `every`-th of `epochs` epochs and
        after the last (`is_due`; epochs None: the fit's own).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, dataset: tf.data.Dataset, num_classes: int, every=1, epochs=None):
        super().__init__(every, epochs)
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self._counts = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        # Traced anew per model: a trace captures the variables of the model it saw.
        self._counts = tf.function(self._batch_counts, reduce_retracing=True)

    def _batch_counts(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """int32 [3, C]: per class, the batch's examples, top-1 hits and top-k hits."""
        logits = self.model(images, training=False)
        labels = tf.cast(labels, tf.int32)
        top = tf.math.top_k(logits, k=min(TOP_K, self.num_classes)).indices
        hits = tf.stack(
            [
                tf.ones_like(labels),
                tf.cast(top[:, 0] == labels, tf.int32),
                tf.cast(tf.reduce_any(top == labels[:, None], axis=-1), tf.int32),
            ]
        )  # [3, B]
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.int32)  # [B, C]
        return tf.reduce_sum(hits[:, :, None] * one_hot[None], axis=1)

    def evaluate(self) -> dict[str, float]:
        """The metrics of the model as it is now (see the class docstring for keys)."""
        counts = np.zeros([3, self.num_classes], np.int64)
        for batch_counts in modeling.run_batches(self._counts, self.dataset):
            counts += batch_counts
        n, top1, topk = counts
        if n.sum() == 0:
            raise stage.PipelineError("the test split is empty: nothing to evaluate per epoch")
        out = {TEST_ACCURACY: top1.sum() / n.sum()}
        if self.num_classes > TOP_K:
            out[TEST_TOP5] = topk.sum() / n.sum()
        for c in np.flatnonzero(n):
            out[class_accuracy_key(int(c))] = top1[c] / n[c]
        return {k: float(v) for k, v in out.items()}


FIT_PREFIX = "fit_"
VAL_PREFIX = "val_"


class LabelSetMonitor(_PeriodicPass):
    """Per-epoch metrics of a labelled train-split subset against its NOISY labels.

    Two uses (pipeline.train adds them): the validation split (`val_`: what model
    selection reads, since a user only has noisy labels) and the train stage's
    training records, un-augmented (`fit_`: the memorization diagnostic; the same
    records for every run, those a run drops included). After every epoch
    (or every `every`-th and the last, as TestSetMonitor), in inference mode, it adds
    to the logs:
      <prefix>accuracy              top-1 accuracy against the training (noisy) labels
      <prefix>mean_class_accuracy   the mean over classes present of that per class
      <prefix>class_<c>_accuracy    per class c present (by noisy label)
      <prefix>memorized             among examples whose label differs from their
                                    clean label, the fraction predicted as the wrong
                                    (given) label; absent if there is none
      <prefix>clean_label_accuracy  top-1 accuracy against the clean labels
    Like TestSetMonitor it reads no random state and changes no variable.

    Args:
      dataset: batches of (input, label, {"clean_label", ...}) (make_dataset with
        with_meta=True, training=False).
      num_classes: C.
      prefix: FIT_PREFIX or VAL_PREFIX.
      every, epochs: as TestSetMonitor's.
    """

    def __init__(
        self, dataset: tf.data.Dataset, num_classes: int, prefix: str, every=1, epochs=None
    ):
        super().__init__(every, epochs)
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.prefix = prefix
        self._counts = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._counts = tf.function(self._batch_counts, reduce_retracing=True)

    def _batch_counts(self, inputs, labels, clean) -> tf.Tensor:
        """int32 [5, C] per (noisy) label: examples, hits, mislabelled, memorized,
        hits against the clean label."""
        pred = tf.argmax(self.model(inputs, training=False), axis=-1, output_type=tf.int32)
        labels = tf.cast(labels, tf.int32)
        clean = tf.cast(clean, tf.int32)
        wrong = labels != clean
        rows = tf.stack(
            [
                tf.ones_like(labels),
                tf.cast(pred == labels, tf.int32),
                tf.cast(wrong, tf.int32),
                tf.cast(wrong & (pred == labels), tf.int32),
                tf.cast(pred == clean, tf.int32),
            ]
        )
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.int32)
        return tf.reduce_sum(rows[:, :, None] * one_hot[None], axis=1)

    def evaluate(self) -> dict[str, float]:
        counts = np.zeros([5, self.num_classes], np.int64)
        for inputs, labels, meta in self.dataset:
            counts += self._counts(inputs, labels, meta["clean_label"]).numpy()
        return label_set_metrics(counts, self.prefix)


def label_set_metrics(counts, prefix: str) -> dict[str, float]:
    """LabelSetMonitor's logs from its int [5, C] counts (see its docstring)."""
    n, hits, wrong, memorized, clean_hits = np.asarray(counts, np.int64)
    if n.sum() == 0:
        raise stage.PipelineError(f"no examples to compute the {prefix}* metrics on")
    present = np.flatnonzero(n)
    per_class = hits[present] / n[present]
    out = {
        prefix + "accuracy": hits.sum() / n.sum(),
        prefix + "mean_class_accuracy": per_class.mean(),
        prefix + "clean_label_accuracy": clean_hits.sum() / n.sum(),
    }
    if wrong.sum():
        out[prefix + "memorized"] = memorized.sum() / wrong.sum()
    for c, acc in zip(present, per_class, strict=True):
        out[f"{prefix}class_{int(c)}_accuracy"] = acc
    return {k: float(v) for k, v in out.items()}


def label_set_monitors(config, workdir: str, fit_ids) -> list[LabelSetMonitor]:
    """The train stage's LabelSetMonitors: on the validation split if the manifest has
    one, and on `fit_ids` (un-augmented; pipeline.train passes the stage's training
    records, not only those a run keeps) with config.eval.per_epoch_memorization."""
    manifest = datasets.load_manifest(workdir)
    monitors = []
    held = validation.validation_ids(manifest)
    subsets = []
    if len(held):
        subsets.append((VAL_PREFIX, held))
    if config.eval.get("per_epoch_memorization", False):
        subsets.append((FIT_PREFIX, fit_ids))
    for prefix, ids in subsets:
        ds = datasets.make_dataset(
            workdir,
            "train",
            batch_size=config.eval.batch_size,
            training=False,
            keep_ids=ids,
            with_meta=True,
        )
        monitors.append(LabelSetMonitor(ds, config.data.num_classes, prefix, **_when(config)))
    return monitors


def monitor_for(config, workdir: str) -> TestSetMonitor:
    """A TestSetMonitor over the workdir's test split, batched as evaluate batches it
    (config.eval.batch_size), so the last epoch's figures match the report's."""
    dataset = datasets.make_dataset(
        workdir, "test", batch_size=config.eval.batch_size, training=False
    )
    return TestSetMonitor(dataset, config.data.num_classes, **_when(config))


def _when(config) -> dict:
    """The train stage's monitors run after every config.eval.per_epoch_every-th epoch
    of config.train.epochs and after the last."""
    every = check_every(config.eval.get("per_epoch_every", 1))
    return {"every": every, "epochs": int(config.train.epochs)}
