"""Training stages on several machines: MultiWorkerMirroredStrategy, custom loop.

With `config.<stage>.strategy = "multi_worker"` (train or pretrain) the stage trains
under `tf.distribute.MultiWorkerMirroredStrategy`, the cluster taken from `TF_CONFIG`
(docs/DISTRIBUTED.md). Keras 3.15's `fit` does not run under that strategy
(keras-team/keras#20585), so `modeling.fit` hands the model to `fit` here: a
`strategy.run(model.train_step)` loop that keeps what Keras's fit gives the stage:
per-epoch logs (each replica's running means, averaged), the callbacks' epoch hooks
(the per-epoch test pass, DRW), TensorBoard logs, a checkpoint after every epoch,
resume after a kill, `model.keras` and `history.json`.

Only the chief (task "chief", else worker 0) writes. The other workers read the
workdir's inputs, train in lockstep, and write nothing: on resume they take the
chief's restored state from it through a collective, so every worker needs to
read the workdir's inputs, but only the chief's output directory matters.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf
from absl import logging

from pipeline.stage import PipelineError

NAME = "multi_worker"
_strategy: tf.distribute.MultiWorkerMirroredStrategy | None = None


def is_chief_task() -> bool:
    """Whether this process is the chief of the TF_CONFIG cluster (or has none).

    TensorFlow's convention: the task of type "chief" if the cluster has one, else
    worker 0. Read from TF_CONFIG alone, so it is known before any TensorFlow op.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as e:
        raise PipelineError(f"TF_CONFIG is not a JSON cluster description: {e}") from e
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The process's MultiWorkerMirroredStrategy (created once, from TF_CONFIG).

    TensorFlow configures collectives when the strategy is created, which it refuses
    once the runtime has started: a stage creates it before touching TensorFlow.
    """
    global _strategy
    if _strategy is None:
        try:
            _strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as e:
            raise PipelineError(
                f"could not start MultiWorkerMirroredStrategy from TF_CONFIG: {e}"
            ) from e
    return _strategy


def start_stage(role: dict) -> None:
    """Starts the strategy (before any TensorFlow op) and sets the stage's `role`
    (pipeline.stage.multi_worker_role): the other workers write nothing and wait at
    `sync` until the chief has prepared the stage's `.partial` directory."""
    strat = strategy()
    role["sync"] = lambda: barrier(strat)
    role["read_only"] = not is_chief_task()


def _sum_of_first_replica(tensors: list) -> list:
    """Replica function: the all-reduced sum of replica 0's `tensors` (others add 0)."""
    ctx = tf.distribute.get_replica_context()
    first = tf.equal(ctx.replica_id_in_sync_group, 0)
    picked = [
        tf.where(first, tf.cast(t, tf.float64), tf.zeros_like(t, tf.float64)) for t in tensors
    ]
    return ctx.all_reduce("SUM", picked)


def _first_replica_values(strat, tensors: list, fn=None) -> list[tf.Tensor]:
    """Every worker gets the values `tensors` hold on replica 0 (the chief's)."""
    fn = fn or tf.function(lambda ts: strat.run(_sum_of_first_replica, args=(ts,)))
    return [strat.experimental_local_results(v)[0] for v in fn(list(tensors))]


def broadcast_from_chief(strat, variables) -> None:
    """Sets `variables` (mirrored) on every worker to the chief's values."""
    variables = list(variables)
    if not variables:
        return
    values = _first_replica_values(strat, [v.value for v in variables])
    for variable, value in zip(variables, values, strict=True):
        variable.assign(tf.cast(value, variable.dtype))


_scalar_fns: dict[int, tf.types.experimental.PolymorphicFunction] = {}


def chief_int(strat, value: int) -> int:
    """The chief's `value`, on every worker (a collective: every worker must call it)."""
    if id(strat) not in _scalar_fns:
        _scalar_fns[id(strat)] = tf.function(
            lambda ts: strat.run(_sum_of_first_replica, args=(ts,))
        )
    scalar = tf.constant(float(value), tf.float64)
    (out,) = _first_replica_values(strat, [scalar], _scalar_fns[id(strat)])
    return int(round(float(out.numpy())))


def barrier(strat) -> None:
    """Returns once every worker has reached it (a collective on a constant)."""
    chief_int(strat, 0)


def _replica_slices(train_ds, ctx, replicas: int):
    """This worker's replicas' slices of every global batch of `train_ds`.

    Every worker builds the whole global batch, augmentation included, and keeps its
    replicas' slices (sizes differ by at most one), so each batch is exactly the one
    a single device would see. Letting tf.data shard instead (DATA policy) rebatches
    before the per-batch augmentation seeds are drawn, which changes the draws.
    """
    if replicas % ctx.num_input_pipelines:
        raise PipelineError(
            f"{replicas} replicas do not divide evenly over {ctx.num_input_pipelines} workers"
        )
    local = replicas // ctx.num_input_pipelines
    first = ctx.input_pipeline_id * local

    def slices(*batch):
        n = tf.shape(tf.nest.flatten(batch)[0])[0]
        out = None
        for r in range(first, first + local):
            part = tf.nest.map_structure(
                lambda t, r=r: t[r * n // replicas : (r + 1) * n // replicas], batch
            )
            one = tf.data.Dataset.from_tensors(part)
            out = one if out is None else out.concatenate(one)
        return out

    return train_ds.flat_map(slices)


def _epoch_logs(strat, per_replica: dict) -> dict[str, float]:
    # Each replica's trackers hold the running means of its own examples: average them.
    return {k: float(strat.reduce("MEAN", v, axis=None)) for k, v in per_replica.items()}


def fit(model, train_ds, section, *, out_dir: str, callbacks=(), resume=True, tensorboard=True):
    """`modeling.fit` under MultiWorkerMirroredStrategy: same arguments, same outputs.

    `train_ds` yields global batches, identical on every worker (seeded); each step
    splits them between the workers (DATA sharding), so N workers take the steps one
    device takes on the same batches. Returns the history (the chief's; {} elsewhere).
    """
    from pipeline import modeling

    strat = model.distribute_strategy
    chief = is_chief_task()
    if getattr(section, "deterministic", False):
        tf.config.experimental.enable_op_determinism()
    if not model.optimizer.built:
        with strat.scope():
            model.optimizer.build(model.trainable_variables)
    callbacks = list(callbacks)
    initial_epoch, history = 0, []
    ckpt_dir = os.path.join(out_dir, modeling.CHECKPOINTS)
    if resume:
        if chief:
            os.makedirs(ckpt_dir, exist_ok=True)
            initial_epoch, history = modeling.restore_checkpoint(model, ckpt_dir)
        initial_epoch = chief_int(strat, initial_epoch)
        if initial_epoch:
            broadcast_from_chief(strat, model.variables + model.optimizer.variables)
        if chief:
            callbacks.append(modeling.EpochCheckpoint(ckpt_dir, history))
    if chief and tensorboard and modeling.tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard")))
    dist_ds = strat.distribute_datasets_from_function(
        lambda ctx: _replica_slices(train_ds, ctx, strat.num_replicas_in_sync)
    )
    # tf.data reshuffles (and redraws augmentation seeds) per iterator: replay the
    # iterators of the completed epochs so that epoch k gets epoch k's order.
    for _ in range(initial_epoch):
        iter(dist_ds)

    @tf.function
    def step(batch, regularized):
        # `regularized`: a Python bool or None, one trace per kind of step.
        return strat.run(model.train_step, args=(batch,), kwargs={"regularized": regularized})

    hooks = keras.callbacks.CallbackList(callbacks, model=model, epochs=section.epochs)
    model.stop_training = False
    hooks.on_train_begin()
    logs: dict[str, float] = {}
    epochs_logs: list[dict] = []
    for epoch in range(initial_epoch, section.epochs):
        model.reset_metrics()
        hooks.on_epoch_begin(epoch)
        per_replica = None
        for batch in dist_ds:
            regularized = None
            if model.reg_every > 1 and model.lam > 0:
                regularized = bool(model.optimizer.iterations.numpy() % model.reg_every == 0)
            per_replica = step(batch, regularized)
        if per_replica is None:
            raise PipelineError("the training dataset is empty")
        logs = _epoch_logs(strat, per_replica)
        logging.info("epoch %d/%d: %s", epoch + 1, section.epochs, logs)
        hooks.on_epoch_end(epoch, logs)
        epochs_logs.append(dict(logs))
        if model.stop_training:
            break
    hooks.on_train_end(logs)
    hist = {}
    if chief:
        # With resume, EpochCheckpoint's history: the restored epochs and these.
        entries = history if resume else epochs_logs
        hist = modeling.finish_fit(model, entries, out_dir, resume=resume)
    # No worker leaves (or reads the chief's output) before the chief has written it.
    barrier(strat)
    return hist
