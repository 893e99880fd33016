"""Training stages on several machines: MultiWorkerMirroredStrategy, custom loop.

With `config.<stage>.strategy = "multi_worker"` (train or pretrain) the stage trains
under `tf.distribute.MultiWorkerMirroredStrategy`, the cluster taken from `TF_CONFIG`
(docs/DISTRIBUTED.md). Keras 3.15's `fit` does not run under that strategy
(keras-team/keras#20585), so `modeling.fit` runs its epochs in `train_epochs` here:
a `strategy.run(model.train_step)` loop that keeps what Keras's fit gives the stage:
per-epoch logs (each replica's running means, averaged), the callbacks' epoch hooks
(the per-epoch test pass, DRW), TensorBoard logs, a checkpoint after every epoch,
resume after a kill, `model.keras` and `history.json`.

Only the chief (task "chief", else worker 0) writes. The other workers read the
workdir's inputs, train in lockstep, and write nothing: on resume they take the
chief's restored state from it through a collective. Every worker reads the same
workdir (a shared filesystem), which is where the chief writes.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from pipeline.core.stage import PipelineError

NAME = "multi_worker"
# TensorFlow configures collectives once per process, when the strategy is created:
# one strategy per process, created by `worker()` (as modeling caches its strategies).
_strategy: list[tf.distribute.MultiWorkerMirroredStrategy] = []


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the TF_CONFIG cluster."""

    index: int  # among all tasks, the chief first
    count: int  # tasks in the cluster (chief and workers)
    chief: bool


def task_from_tf_config(raw: str | None) -> Task:
    """Parses and checks TF_CONFIG (a JSON string; None if unset), or PipelineError.

    The cluster must list 2 or more tasks ("chief" and "worker" entries of
    "host:port"); "task" names this process's type and index. TensorFlow's
    convention: the chief is the "chief" task if there is one, else worker 0.
    """
    fix = "set it on every worker as docs/DISTRIBUTED.md shows"
    if not raw:
        raise PipelineError(f"strategy 'multi_worker' needs TF_CONFIG, which is not set; {fix}")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PipelineError(
            f"TF_CONFIG is not a cluster description ({type(e).__name__}: {e}); {fix}"
        ) from e
    if len(chiefs) > 1:
        raise PipelineError(f"TF_CONFIG lists {len(chiefs)} chiefs; at most one; {fix}")
    tasks = len(chiefs) + len(workers)
    if tasks < 2:
        raise PipelineError(
            f"TF_CONFIG's cluster has {tasks} task(s); strategy 'multi_worker' needs 2 or "
            "more (on one machine use strategy 'default' or 'mirrored')"
        )
    members = {"chief": chiefs, "worker": workers}
    if kind not in members or not 0 <= index < len(members[kind]):
        raise PipelineError(
            f"TF_CONFIG's task {kind!r} {index} is not in its cluster "
            f"({len(chiefs)} chief, {len(workers)} workers); {fix}"
        )
    position = index if kind == "chief" else len(chiefs) + index
    return Task(index=position, count=tasks, chief=position == 0)


@dataclasses.dataclass(frozen=True)
class Worker:
    """A process of a multi-worker stage: its task and the strategy it trains under.

    Passed explicitly to what must know it (stage.stage_output, the stage runs,
    `fit`): only the chief writes, and every worker meets at `barrier()`.
    """

    task: Task
    strategy: tf.distribute.MultiWorkerMirroredStrategy

    @property
    def chief(self) -> bool:
        return self.task.chief

    def barrier(self) -> None:
        """Returns once every worker has reached it (a collective on a constant)."""
        chief_int(self.strategy, 0)


def uses_workers(section) -> bool:
    """Whether a training section (config.train or config.pretrain) is multi-worker."""
    return hasattr(section, "get") and section.get("strategy", "default") == NAME


def worker(section) -> Worker | None:
    """This process's Worker if `section` trains with strategy "multi_worker", else None.

    Creates the strategy on the first call, from TF_CONFIG (checked first): a stage
    main calls it before any TensorFlow op, since TensorFlow configures collectives
    only then.
    """
    if not uses_workers(section):
        return None
    task = task_from_tf_config(os.environ.get("TF_CONFIG"))
    if not _strategy:
        try:
            _strategy.append(tf.distribute.MultiWorkerMirroredStrategy())
        except (RuntimeError, ValueError) as e:
            raise PipelineError(
                f"could not start MultiWorkerMirroredStrategy from TF_CONFIG: {e}"
            ) from e
    return Worker(task=task, strategy=_strategy[0])


def strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The process's MultiWorkerMirroredStrategy (modeling.distribution_strategy)."""
    return worker({"strategy": NAME}).strategy


def _sum_of_first_replica(tensors: list) -> list:
    """Replica function: the all-reduced sum of replica 0's `tensors` (others add 0)."""
    ctx = tf.distribute.get_replica_context()
    first = tf.equal(ctx.replica_id_in_sync_group, 0)
    picked = [
        tf.where(first, tf.cast(t, tf.float64), tf.zeros_like(t, tf.float64)) for t in tensors
    ]
    return ctx.all_reduce("SUM", picked)


# The traced function of `_first_replica_values`, per strategy (one per process).
_first_replica_fns: dict[int, tf.types.experimental.PolymorphicFunction] = {}


def _first_replica_values(strat, tensors: list) -> list[tf.Tensor]:
    """Every worker gets the values `tensors` hold on replica 0 (the chief's)."""
    if id(strat) not in _first_replica_fns:
        _first_replica_fns[id(strat)] = tf.function(
            lambda ts: strat.run(_sum_of_first_replica, args=(ts,)), reduce_retracing=True
        )
    fn = _first_replica_fns[id(strat)]
    return [strat.experimental_local_results(v)[0] for v in fn(list(tensors))]


def broadcast_from_chief(strat, variables) -> None:
    """Sets `variables` (mirrored) on every worker to the chief's values."""
    variables = list(variables)
    if not variables:
        return
    values = _first_replica_values(strat, [v.value for v in variables])
    for variable, value in zip(variables, values, strict=True):
        variable.assign(tf.cast(value, variable.dtype))


def chief_int(strat, value: int) -> int:
    """The chief's `value`, on every worker (a collective: every worker must call it)."""
    (out,) = _first_replica_values(strat, [tf.constant(float(value), tf.float64)])
    return int(round(float(out.numpy())))


def check_same_weights(strat, model) -> None:
    """PipelineError unless this worker's weights equal the chief's (a collective).

    Every worker applies the same all-reduced updates, so they agree bitwise; a
    difference means the workers trained on different inputs or code.
    """
    mine = [np.asarray(w) for w in model.get_weights()]
    chiefs = _first_replica_values(strat, [tf.constant(w) for w in mine])
    pairs = zip(mine, chiefs, strict=True)
    worst = max((float(np.max(np.abs(a - b.numpy()), initial=0.0)) for a, b in pairs), default=0.0)
    if worst != 0.0:
        raise PipelineError(
            f"this worker's weights differ from the chief's by up to {worst:g}; the "
            "workers must run the same code and config on the same workdir"
        )
    logging.info("Weights identical to the chief's (%d arrays).", len(mine))


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


def take_chief_state(me: Worker, model, initial_epoch: int) -> int:
    """Every worker takes the chief's training state after the chief restored its
    newest checkpoint (`modeling.fit`): its epochs done (returned) and, if any, its
    weights and optimizer state. A collective: every worker must call it."""
    initial_epoch = chief_int(me.strategy, initial_epoch)
    if initial_epoch:
        broadcast_from_chief(me.strategy, model.variables + model.optimizer.variables)
    return initial_epoch


def train_epochs(me: Worker, model, train_ds, section, callbacks, initial_epoch: int) -> None:
    """The epochs of `modeling.fit` under MultiWorkerMirroredStrategy, from
    `initial_epoch`: one strategy.run(train_step) per global batch and the callbacks'
    epoch hooks (which keep the logs); then checks that every worker ends with the
    chief's weights.

    `train_ds` yields global batches, identical on every worker (seeded); each worker
    trains on its replicas' slices of them (`_replica_slices`), so N workers take the
    steps one device takes on the same batches.
    """
    strat = model.distribute_strategy
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
    for epoch in range(initial_epoch, section.epochs):
        model.reset_metrics()
        hooks.on_epoch_begin(epoch)
        per_replica = None
        for batch in dist_ds:
            regularized = None
            if model.alternates_steps:
                regularized = bool(model.is_regularized_step(model.optimizer.iterations.numpy()))
            per_replica = step(batch, regularized)
        if per_replica is None:
            raise PipelineError("the training dataset is empty")
        # Each replica's trackers hold the running means of its own examples: average.
        logs = {k: float(strat.reduce("MEAN", v, axis=None)) for k, v in per_replica.items()}
        logging.info("epoch %d/%d: %s", epoch + 1, section.epochs, logs)
        hooks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    hooks.on_train_end(logs)
    check_same_weights(strat, model)
