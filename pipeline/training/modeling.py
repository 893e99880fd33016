"""Building, compiling and fitting models from config sections."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from har_tf import HARModel
from har_tf.models import block_output_layers, cifar_resnet, imdb_bilstm, rnn_tap_layers
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.training import multi_worker

# "resnet": a CIFAR-style ResNet on images; "bilstm": the paper's IMDB BiLSTM on
# token ids (taps: its LSTM layers).
MODELS = ("resnet", "bilstm")
OPTIMIZERS = ("sgd", "adam")
# "default": TensorFlow's default strategy (one device: the first GPU, else the CPU).
# "mirrored": tf.distribute.MirroredStrategy() (every local GPU, one replica each).
# "multi_worker": MultiWorkerMirroredStrategy over the TF_CONFIG cluster
#   (pipeline.training.multi_worker).
STRATEGIES = ("default", "mirrored", "multi_worker")
_strategies: dict[str, tf.distribute.Strategy] = {}


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy a training section names (one per process)."""
    if name not in STRATEGIES:
        raise PipelineError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        return multi_worker.strategy()
    if name not in _strategies:
        _strategies[name] = (
            tf.distribute.get_strategy() if name == "default" else tf.distribute.MirroredStrategy()
        )
    return _strategies[name]


def check_config(config) -> None:
    """The model and the two training sections name known things (else PipelineError):
    what build_backbone, build_har_model and compile_model would refuse later."""
    m = config.model
    _check_model(config)
    for name in ("pretrain", "train"):
        section = config[name]
        optimizer = section.get("optimizer", "sgd")
        if optimizer not in OPTIMIZERS:
            raise PipelineError(
                f"config.{name}.optimizer: unknown optimizer {optimizer!r}; known: "
                f"{', '.join(OPTIMIZERS)}"
            )
        strategy = section.get("strategy", "default")
        if strategy not in STRATEGIES:
            raise PipelineError(
                f"config.{name}.strategy: unknown strategy {strategy!r}; known: "
                f"{', '.join(STRATEGIES)}"
            )
        if list(section.lr_drop_epochs) != sorted(section.lr_drop_epochs):
            raise PipelineError(
                f"config.{name}.lr_drop_epochs must be increasing, got {section.lr_drop_epochs}"
            )
    if config.train.get("checkpoint_blocks", False) and m.name != "resnet":
        raise PipelineError(
            "config.train.checkpoint_blocks recomputes residual blocks: it needs "
            f"model.name 'resnet', not {m.name!r}"
        )


def _check_model(config) -> None:
    m = config.model
    if m.name not in MODELS:
        raise PipelineError(f"unknown model.name {m.name!r}; known: {', '.join(MODELS)}")
    modality = config.data.get("modality", "image")
    if (m.name == "bilstm") != (modality == "text"):
        raise PipelineError(
            f"model.name {m.name!r} does not take config.data.modality {modality!r} "
            '("bilstm" is the text model, "resnet" the image model)'
        )


def build_backbone(config) -> keras.Model:
    """The experiment's network (config.model): raw pixels, or token ids, to logits."""
    m, d = config.model, config.data
    _check_model(config)
    if m.name == "bilstm":
        return imdb_bilstm(
            # Token ids are < max_tokens (padding and OOV included).
            vocab_size=int(d.text.max_tokens),
            embedding_dim=m.embedding_dim,
            units=m.units,
            num_layers=m.num_layers,
            dropout=m.dropout,
            num_classes=d.num_classes,
            sequence_length=int(d.text.sequence_length),
        )
    return cifar_resnet(
        num_classes=d.num_classes,
        input_shape=tuple(d.image_shape),
        blocks_per_stage=m.blocks_per_stage,
        widths=tuple(m.widths),
        stem_strides=m.stem_strides,
        mean=tuple(d.mean),
        std=tuple(d.std),
        synchronized_bn=m.synchronized_bn,
    )


def build_har_model(
    config, section, *, lam: float, tau=None, seed: int, reg_every: int = 1
) -> HARModel:
    """A fresh, seeded HARModel: every run of a config starts from the same weights.

    `section` is the training stage's config (pretrain or train): its weight_decay
    is the coupled L2 of the authors' SGD, and its `strategy` the `tf.distribute`
    strategy whose scope the model is created in (`compile_model` and `fit` then
    use the same one).
    """
    strategy = distribution_strategy(getattr(section, "strategy", "default"))
    if strategy.num_replicas_in_sync > 1 and not config.model.synchronized_bn:
        logging.warning(
            "Training on %d replicas with config.model.synchronized_bn=False: each "
            "replica normalizes with its own slice of the batch, so results depend on "
            "the replica count and BN moving statistics differ across replicas",
            strategy.num_replicas_in_sync,
        )
    checkpoint = lam > 0 and bool(config.train.get("checkpoint_blocks", False))
    if checkpoint and config.model.name != "resnet":
        raise PipelineError(
            "config.train.checkpoint_blocks recomputes residual blocks: it needs "
            f"model.name 'resnet', not {config.model.name!r}"
        )
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        backbone = build_backbone(config)
        cuts = block_output_layers(backbone) if checkpoint else None
        if checkpoint and not cuts:
            raise PipelineError(
                "config.train.checkpoint_blocks needs at least two residual blocks to cut "
                "between; this model has one"
            )
        return HARModel(
            backbone,
            lam=lam,
            tau=tau,
            # None: the pre-affine BatchNormalizations (the ResNets).
            tap_layers=rnn_tap_layers(backbone) if config.model.name == "bilstm" else None,
            aggregation=config.train.aggregation,
            scale=config.train.scale,
            weight_decay=section.weight_decay,
            reg_every=reg_every,
            checkpoint_layers=cuts,
        )


def compile_model(model: HARModel, section, *, steps_per_epoch: int) -> None:
    """The section's optimizer ("sgd": with momentum; "adam"), coupled weight decay
    (in HARModel) and a step schedule (section fields)."""
    name = section.get("optimizer", "sgd")
    if name not in OPTIMIZERS:
        raise PipelineError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    boundaries = [int(e * steps_per_epoch) for e in section.lr_drop_epochs]
    if boundaries != sorted(boundaries):
        raise PipelineError(f"lr_drop_epochs must be increasing, got {section.lr_drop_epochs}")
    values = [section.learning_rate * section.lr_drop_factor**i for i in range(len(boundaries) + 1)]
    lr = (
        keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
        if boundaries
        else section.learning_rate
    )
    # The optimizer must be created under the strategy the model was built in.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=(
                keras.optimizers.SGD(lr, momentum=section.momentum)
                if name == "sgd"
                else keras.optimizers.Adam(lr)
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            # Keras's "auto" turns XLA on for a GPU; HAR under XLA is unverified there,
            # slower on this CPU, and refused under MirroredStrategy.
            jit_compile=False,
        )


def steps_for(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


CHECKPOINTS = "checkpoints"
_CKPT = "epoch-{:04d}.weights.h5"
CHECKPOINT_HISTORY = "history.partial.json"


class EpochLogs(keras.callbacks.Callback):
    """Keeps each epoch's logs as one dict in `history` (index = epoch). Keras's
    History keeps one list per key instead, which misaligns a key that only some
    epochs log (config.eval.per_epoch_every > 1)."""

    def __init__(self, history: list[dict]):
        super().__init__()
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        self.history[epoch:] = [{k: float(v) for k, v in (logs or {}).items()}]


class EpochCheckpoint(EpochLogs):
    """Saves the training state (model and optimizer variables) after every epoch.

    Writes `<directory>/epoch-NNNN.weights.h5` (NNNN = epochs completed) through a
    temporary file and an atomic rename, after `history.partial.json` (every epoch's
    logs so far), and keeps only the newest checkpoint. A process killed at any point
    leaves a loadable checkpoint whose history covers exactly its epochs.
    """

    def __init__(self, directory: str, history: list[dict]):
        super().__init__(history)
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        stage.write_json(os.path.join(self.directory, CHECKPOINT_HISTORY), self.history)
        tmp = os.path.join(self.directory, "tmp-" + _CKPT.format(epoch + 1))
        self.model.save_weights(tmp, overwrite=True)
        stage.replace_durably(tmp, os.path.join(self.directory, _CKPT.format(epoch + 1)))
        for old in range(epoch + 1):
            path = os.path.join(self.directory, _CKPT.format(old))
            if os.path.exists(path):
                os.remove(path)


def restore_checkpoint(model: HARModel, directory: str) -> tuple[int, list[dict]]:
    """Loads the newest EpochCheckpoint in `directory` into `model` (compiled).

    Returns:
      (epochs completed, their logs); (0, []) if there is no checkpoint.
    """
    done = sorted(
        int(f[len("epoch-") : -len(".weights.h5")])
        for f in (os.listdir(directory) if os.path.isdir(directory) else [])
        if f.startswith("epoch-") and f.endswith(".weights.h5")
    )
    if not done:
        return 0, []
    epoch = done[-1]
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(directory, _CKPT.format(epoch)))
    history = stage.read_json(os.path.join(directory, CHECKPOINT_HISTORY))[:epoch]
    if len(history) != epoch:
        raise PipelineError(
            f"checkpoint {directory} holds {epoch} epochs but its history "
            f"{len(history)}; delete the directory to start over"
        )
    logging.info("Resuming from %s: %d epochs already done.", directory, epoch)
    return epoch, history


def epoch_steps(train_ds) -> int | None:
    """The `steps_per_epoch` that gives epoch k the dataset's k-th iterator, which the
    resume replay in `fit` relies on.

    Keras 3.15 makes one iterator per epoch for a dataset of unknown length (None
    here), but for one whose length tf.data knows and no `steps_per_epoch` it makes two
    per epoch (one at its start and one it discards at its end), so epochs 1, 2, 3 of
    a fit see the dataset's iterators 1, 3, 5 and a fit resumed after epoch 1 sees
    others. Given the known length as `steps_per_epoch`, it keeps each epoch's
    end-of-epoch iterator for the next epoch: one per epoch again.
    """
    if not isinstance(train_ds, tf.data.Dataset):
        return None
    cardinality = int(train_ds.cardinality())  # < 0: unknown or infinite
    return cardinality if cardinality > 0 else None


def fit(
    model: HARModel,
    train_ds,
    section,
    *,
    out_dir: str,
    callbacks=(),
    resume: bool = True,
    tensorboard: bool = True,
) -> dict:
    """Fits for section.epochs, saves model.keras and history.json into out_dir.

    With `resume`, the training state is checkpointed after every epoch in
    `out_dir/checkpoints/` and a later call (after a crash or kill) continues from the
    last completed epoch; the checkpoints are deleted once model.keras is written.
    With section.deterministic, TensorFlow's op determinism is enabled, so a resumed
    fit ends with the same weights as an uninterrupted one (the tf.data input is
    advanced by the completed epochs, so that each epoch sees its own shuffle and
    augmentation). That holds for input of unknown length, as the pipeline's TFRecord
    datasets are, and for a dataset whose length tf.data knows (`epoch_steps`). With
    `tensorboard`, TensorBoard logs go to `out_dir/tensorboard/` (if the `tensorboard`
    package is installed; else a warning). section.verbose is Keras's progress output (--quiet
    sets it to 0, `cli.config_from_flags`).

    With section.strategy "multi_worker" the epochs run in pipeline.training.multi_worker's
    loop (Keras's fit does not run under that strategy) and only the chief writes;
    returns the history on the chief, {} on the other workers.
    """
    me = multi_worker.worker(section)
    chief = me is None or me.chief
    if getattr(section, "deterministic", False):
        tf.config.experimental.enable_op_determinism()
    if me is not None and not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)
    callbacks = list(callbacks)
    initial_epoch, history = 0, []
    if resume:
        ckpt_dir = os.path.join(out_dir, CHECKPOINTS)
        if chief:
            os.makedirs(ckpt_dir, exist_ok=True)
            initial_epoch, history = restore_checkpoint(model, ckpt_dir)
        if me is not None:  # every worker takes the chief's restored state
            initial_epoch = multi_worker.take_chief_state(me, model, initial_epoch)
        else:
            # tf.data reshuffles (and redraws augmentation seeds) per iterator: replay
            # the iterators of the completed epochs so that epoch k gets epoch k's
            # order (multi_worker.train_epochs replays its distributed dataset's).
            for _ in range(initial_epoch):
                iter(train_ds)
        if chief:
            callbacks.append(EpochCheckpoint(ckpt_dir, history))
    else:
        callbacks.append(EpochLogs(history))
    if chief and tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard")))
    elif chief and tensorboard:
        logging.warning("No TensorBoard logs: the `tensorboard` package is not installed.")
    if me is None:
        # The dataset is shuffled by tf.data; Keras's own shuffle does not apply to it.
        model.fit(
            train_ds,
            epochs=section.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=epoch_steps(train_ds),
            verbose=section.verbose,
            shuffle=False,
            callbacks=callbacks,
        )
        return finish_fit(model, history, out_dir, resume=resume)
    multi_worker.train_epochs(me, model, train_ds, section, callbacks, initial_epoch)
    hist = finish_fit(model, history, out_dir, resume=resume) if chief else {}
    # No worker leaves (or reads the chief's output) before the chief has written it.
    me.barrier()
    return hist


class TrainingDiverged(PipelineError):
    """A fit whose logged metrics stopped being finite (NaN or inf): a property of the
    run's settings (a study records it as the run's result), not of its inputs."""


def finish_fit(model: HARModel, logs: list[dict], out_dir: str, *, resume: bool) -> dict:
    """The end of a fit: every epoch's logs as history.json (refused if not finite),
    model.keras, and the checkpoints (`resume`) deleted. Returns the history.

    history.json holds one list per key, one entry per epoch; a key that an epoch did
    not log (the per-epoch passes with config.eval.per_epoch_every > 1) is None there.
    """
    keys = sorted({k for entry in logs for k in entry})
    hist = {k: [None if e.get(k) is None else float(e[k]) for e in logs] for k in keys}
    for k, vals in hist.items():
        logged = [v for v in vals if v is not None]
        if not np.all(np.isfinite(logged)):
            raise TrainingDiverged(f"training diverged: {k} became {vals[-1]} (history {vals})")
    tmp = os.path.join(out_dir, "tmp-model.keras")
    model.save(tmp)
    stage.replace_durably(tmp, os.path.join(out_dir, "model.keras"))
    stage.write_json(os.path.join(out_dir, "history.json"), hist)
    if resume:
        shutil.rmtree(os.path.join(out_dir, CHECKPOINTS), ignore_errors=True)
    return hist


def tensorboard_available() -> bool:
    """Whether tf.summary can write (it needs the `tensorboard` package)."""
    return importlib.util.find_spec("tensorboard") is not None


def is_fitted(out_dir: str) -> bool:
    """Whether `fit` finished in out_dir (model.keras and history.json written)."""
    return all(os.path.isfile(os.path.join(out_dir, f)) for f in ("model.keras", "history.json"))


def forward(model: keras.Model):
    """model(x, training=False) as one tf.function (retraced only for new shapes)."""
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def run_batches(fn, dataset) -> list:
    """[fn(*batch) in NumPy, for each batch of `dataset`]: the pipeline's inference loop.

    `fn` maps one batch's tensors to a tensor or a nest of tensors. Trace what it
    calls once (`forward(model)`, a tf.function kept across calls) rather than per
    call, so that the loop does not retrace.
    """
    return [tf.nest.map_structure(lambda t: t.numpy(), fn(*batch)) for batch in dataset]


def load_model(path: str) -> HARModel:
    if not os.path.exists(path):
        raise PipelineError(f"no model at {path}")
    return keras.saving.load_model(path)
