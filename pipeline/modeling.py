"""Building, compiling and fitting models from config sections."""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from har_tf import HARModel
from har_tf.models import cifar_resnet
from pipeline.stage import PipelineError

MODELS = ("resnet",)
# "default": TensorFlow's default strategy (one device: the first GPU, else the CPU).
# "mirrored": tf.distribute.MirroredStrategy() (every local GPU, one replica each).
STRATEGIES = ("default", "mirrored")
_strategies: dict[str, tf.distribute.Strategy] = {}


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy a training section names (one per process)."""
    if name not in STRATEGIES:
        raise PipelineError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if name not in _strategies:
        _strategies[name] = (
            tf.distribute.get_strategy() if name == "default" else tf.distribute.MirroredStrategy()
        )
    return _strategies[name]


def build_backbone(config) -> keras.Model:
    """The experiment's network (config.model), mapping raw pixels to logits."""
    m, d = config.model, config.data
    if m.name not in MODELS:
        raise PipelineError(f"unknown model.name {m.name!r}; known: {', '.join(MODELS)}")
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


def build_har_model(config, section, *, lam: float, tau=None, seed: int) -> HARModel:
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
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        return HARModel(
            build_backbone(config),
            lam=lam,
            tau=tau,
            aggregation=config.train.aggregation,
            scale=config.train.scale,
            weight_decay=section.weight_decay,
        )


def compile_model(model: HARModel, section, *, steps_per_epoch: int) -> None:
    """SGD with momentum, coupled weight decay and a step schedule (section fields)."""
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
            optimizer=keras.optimizers.SGD(lr, momentum=section.momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            # Keras's "auto" turns XLA on for a GPU; HAR under XLA is unverified there,
            # slower on this CPU, and refused under MirroredStrategy.
            jit_compile=False,
        )


def steps_for(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def fit(model: HARModel, train_ds, section, *, out_dir: str, callbacks=()) -> dict:
    """Fits for section.epochs, saves model.keras and history.json into out_dir."""
    # The dataset is shuffled by tf.data; Keras's own shuffle does not apply to it.
    history = model.fit(
        train_ds,
        epochs=section.epochs,
        verbose=section.verbose,
        shuffle=False,
        callbacks=list(callbacks),
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    for k, vals in hist.items():
        if not np.all(np.isfinite(vals)):
            raise PipelineError(f"training diverged: {k} became {vals[-1]} (history {vals})")
    model.save(os.path.join(out_dir, "model.keras"))
    with open(os.path.join(out_dir, "history.json"), "w") as f:
        json.dump(hist, f, indent=2)
    return hist


def predict_classes(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted class ids) over a dataset of (image, label) batches."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    labels, preds = [], []
    for images, y in dataset:
        preds.append(np.argmax(forward(images).numpy(), axis=-1))
        labels.append(y.numpy())
    if not labels:
        return np.zeros([0], np.int64), np.zeros([0], np.int64)
    return np.concatenate(labels), np.concatenate(preds)


def load_model(path: str) -> HARModel:
    if not os.path.exists(path):
        raise PipelineError(f"no model at {path}")
    return keras.saving.load_model(path)
