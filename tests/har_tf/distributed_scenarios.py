"""Training scenarios that `test_distributed.py` runs in subprocesses.

A strategy's devices must be configured before TensorFlow initializes its runtime,
which the pytest process has long done, so each scenario runs in a fresh
interpreter and writes what it measured to an .npz file for the test to compare:

    python -m tests.har_tf.distributed_scenarios mirrored scales|variants OUT.npz
    python -m tests.har_tf.distributed_scenarios worker INDEX PORT0,PORT1 OUT.npz

`mirrored` trains the same HARModel from the same weights on the same batches
three ways: on one device (the reference), on two replicas (two logical CPUs)
with synchronized BatchNorm, and on two replicas without; for both `scale`
options ("scales"); and variants (reg_every, checkpoint_layers) on two replicas
("variants"): two halves, so that two processes run them side by side. `worker`
is one of two MultiWorkerMirroredStrategy workers (the exact step, the checkpointed
step, and reg_every=2 with the kind of step picked by the loop).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from har_tf import HARModel  # noqa: E402
from har_tf.models import block_output_layers, cifar_resnet  # noqa: E402

PER_REPLICA_BATCH = 8
REPLICAS = 2
GLOBAL_BATCH = PER_REPLICA_BATCH * REPLICAS
# Two full global batches, then a last one of 3 examples that the replicas split
# unevenly (2 + 1), as the end of an epoch does.
LAST_BATCH = 3
STEPS = 3
NUM_CLASSES = 3
SHAPE = (8, 8, 3)
LAM = 2.0
TAU = (1.0, 0.5, 0.25)
# Non-uniform, so the weighted-mean CE (DRW) is exercised: its denominator is a sum
# over the global batch.
CLASS_WEIGHTS = (1.0, 2.0, 0.5)
WEIGHT_DECAY = 1e-3
# The halves of the `mirrored` scenario, two processes that run side by side.
MIRRORED_PARTS = ("scales", "variants")


def data():
    """STEPS global batches of images and labels; fixed, so every process agrees."""
    rng = np.random.default_rng(0)
    n = (STEPS - 1) * GLOBAL_BATCH + LAST_BATCH
    x = rng.normal(size=(n, *SHAPE)).astype("float32")
    # Shift the mean per example so that BN statistics of the two halves differ.
    x += np.linspace(-1.0, 1.0, n, dtype="float32")[:, None, None, None]
    y = rng.integers(0, NUM_CLASSES, size=n).astype("int32")
    return x, y


def build(
    *, synchronized_bn: bool, scale: str = "official", reg_every: int = 1, checkpoint=False
) -> HARModel:
    """The tiny residual HARModel of every scenario, compiled (build under a scope)."""
    keras.utils.set_random_seed(0)
    backbone = cifar_resnet(
        num_classes=NUM_CLASSES,
        input_shape=SHAPE,
        blocks_per_stage=1,
        widths=(4, 8),
        synchronized_bn=synchronized_bn,
    )
    model = HARModel(
        backbone,
        lam=LAM,
        tau=TAU,
        scale=scale,
        weight_decay=WEIGHT_DECAY,
        reg_every=reg_every,
        checkpoint_layers=block_output_layers(backbone) if checkpoint else None,
    )
    model.set_class_weights(CLASS_WEIGHTS)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class StepLogs(keras.callbacks.Callback):
    """The logs after each training step (running means over the epoch's steps)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in (logs or {}).items()})


def train(model: HARModel, x, y, initial_weights=None) -> list[dict]:
    if initial_weights is not None:
        model.set_weights(initial_weights)
    steps = StepLogs()
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[steps])
    return steps.logs


def replica_values(model: HARModel) -> list[np.ndarray]:
    """Every weight as [replicas, ...]: each replica's own copy of the variable."""
    out = []
    for w in model.weights:
        v = w.value
        parts = v.values if hasattr(v, "values") else (v,)
        out.append(np.stack([np.asarray(p.numpy()) for p in parts]))
    return out


def mirrored(part: str, out_path: str) -> None:
    """One of the two halves of the MirroredStrategy scenarios (MIRRORED_PARTS), which
    the test runs side by side: "scales" trains on one device and on two replicas,
    with and without synchronized BN, for both `scale` options; "variants" trains
    reg_every=2 and checkpoint_layers, and records the errors of a custom loop
    without the kind of step and of jit_compile."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )
    x, y = data()
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    assert strategy.num_replicas_in_sync == REPLICAS
    # Every run starts from the seeded build's weights (the same in both halves).
    ref = build(synchronized_bn=False)
    initial = ref.get_weights()
    names = [w.path for w in ref.weights]
    results, logs = {"initial": [w[None] for w in initial]}, {}
    jit_error = loop_error = ""
    if part == "scales":
        for scale in ("official", "per_example"):
            # Reference: one device, ordinary (unsynchronized, exact-moments) BN.
            ref = build(synchronized_bn=False, scale=scale)
            logs[f"single_{scale}"] = train(ref, x, y, initial)
            results[f"single_{scale}"] = replica_values(ref)
            runs = [("sync", True)] + ([("nosync", False)] if scale == "official" else [])
            for tag, sync in runs:
                with strategy.scope():
                    model = build(synchronized_bn=sync, scale=scale)
                logs[f"{tag}_{scale}"] = train(model, x, y, initial)
                results[f"{tag}_{scale}"] = replica_values(model)
    elif part == "variants":
        # reg_every=2 (steps 0 and 2 regularized with 2 lam, step 1 ERM): the two
        # kinds of step are two train functions under replicas, tf.cond on one device.
        ref = build(synchronized_bn=False, reg_every=2)
        logs["single_every2"] = train(ref, x, y, initial)
        results["single_every2"] = replica_values(ref)
        with strategy.scope():
            model = build(synchronized_bn=True, reg_every=2)
        logs["sync_every2"] = train(model, x, y, initial)
        results["sync_every2"] = replica_values(model)
        # A custom strategy.run loop cannot alternate inside the step: a clear error.
        try:
            batch = (x[:GLOBAL_BATCH], y[:GLOBAL_BATCH])
            strategy.run(tf.function(model.train_step), args=(batch,))
        except ValueError as e:
            loop_error = str(e)
        # The checkpointed step (segments recomputed) under replicas: exact HAR still.
        with strategy.scope():
            model = build(synchronized_bn=True, checkpoint=True)
        logs["sync_ckpt"] = train(model, x, y, initial)
        results["sync_ckpt"] = replica_values(model)
        # XLA fails under MirroredStrategy in TF 2.21; HARModel refuses it with a
        # clear error.
        with strategy.scope():
            model = build(synchronized_bn=True)
            model.compile(loss="sparse_categorical_crossentropy", jit_compile=True)
        try:
            model.fit(x[:GLOBAL_BATCH], y[:GLOBAL_BATCH], batch_size=GLOBAL_BATCH, verbose=0)
        except ValueError as e:
            jit_error = str(e)
    else:
        raise SystemExit(f"unknown mirrored part {part!r}: expected one of {MIRRORED_PARTS}")
    arrays = {f"{key}/{i}": v for key, vals in results.items() for i, v in enumerate(vals)}
    np.savez(
        out_path,
        names=np.array(names),
        logs=json.dumps(logs),
        jit_error=jit_error,
        loop_error=loop_error,
        **arrays,
    )


def worker(index: int, ports: str, out_path: str) -> None:
    """One of two MultiWorkerMirroredStrategy workers (one CPU replica each).

    Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras
    #20585: its first-batch `strategy.reduce` over a nest, then its reduction of
    the step's outputs), so this is the custom loop of docs/DISTRIBUTED.md:
    `strategy.run(model.train_step)` on a distributed dataset.
    """
    hosts = [f"127.0.0.1:{p}" for p in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == len(hosts) == REPLICAS
    x, y = data()
    # Every worker builds the same dataset of global batches; DATA sharding splits
    # each global batch between the workers (explicit: AUTO would first try FILE).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
    dist_ds = strategy.experimental_distribute_dataset(ds)

    def train_loop(model):
        @tf.function
        def step(batch, regularized):
            # `regularized` is a Python bool or None: one trace per kind of step.
            return strategy.run(
                model.train_step, args=(batch,), kwargs={"regularized": regularized}
            )

        # Traced on the dataset's batch spec (batch size None), which the last,
        # smaller batch reuses: traced on the first batch's shape, the step would be
        # traced again for it (a double-backprop step each time).
        for regularized in (None,) if model.reg_every == 1 else (True, False):
            step.get_concrete_function(dist_ds.element_spec, regularized)
        logs = []
        for batch in dist_ds:
            regularized = None
            if model.reg_every > 1:
                regularized = bool(model.optimizer.iterations.numpy() % model.reg_every == 0)
            per_replica = step(batch, regularized)
            # Each replica's trackers hold its own examples' running means: average them.
            logs.append(
                {k: float(strategy.reduce("MEAN", v, axis=None)) for k, v in per_replica.items()}
            )
        return logs

    initial, logs, arrays = None, {}, {}
    # The exact step; the checkpointed step (checkpoint_layers); reg_every=2, each
    # step's kind picked by the loop. The same loop, from the same weights.
    for tag, kwargs in (("", {}), ("_ckpt", {"checkpoint": True}), ("_every2", {"reg_every": 2})):
        with strategy.scope():
            model = build(synchronized_bn=True, **kwargs)
            model.optimizer.build(model.trainable_variables)
        if initial is None:
            initial = model.get_weights()
            arrays.update({f"initial/{i}": v for i, v in enumerate(initial)})
        model.set_weights(initial)
        logs[f"logs{tag}"] = json.dumps(train_loop(model))
        arrays.update({f"final{tag}/{i}": v for i, v in enumerate(model.get_weights())})
    assert model.reg_every == 2
    np.savez(out_path, **logs, **arrays)
    # A last collective, so that no worker exits (and takes the coordination
    # service down) while the other is still working.
    barrier = tf.function(lambda: strategy.run(lambda: tf.constant(1.0)))
    strategy.reduce("SUM", barrier(), axis=None)


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        mirrored(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "worker":
        worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown scenario {sys.argv[1]!r}: expected mirrored or worker")
