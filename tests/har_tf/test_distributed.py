"""Data-parallel HAR: training on several replicas equals training on one device.

The distributed runs happen in subprocesses (`distributed_scenarios.py`): logical
devices and TF_CONFIG must be set before TensorFlow initializes, which this
process did long ago. The reference is the same HARModel trained by `fit` on one
device with ordinary (unsynchronized) BatchNorm over the same global batches.

Tolerance: rtol 1e-4 / atol 1e-6 on weights and moving statistics after three SGD
steps (two global batches of 16, then one of 3 that the replicas split 2 + 1). The
runs differ only in the order of float32 reductions (per-replica partial sums,
all-reduces, E[x^2] - E[x]^2 for synchronized BN moments), i.e. relative errors of
~1e-6 that the steps carry into the weights; measured worst case here: 5% of the
tolerance. A real mistake is far outside it: BN without synchronization misses by
10^4-10^5 tolerances, and normalizing DRW class weights per replica (a bug this test
caught) by 10^4.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from har_tf import HARModel
from har_tf.models import cifar_resnet
from tests import harness
from tests.har_tf import distributed_scenarios as scenarios

# Only a guard against a hung collective: 300 s was hit by the unchanged scenarios at
# load 13-18 on the 2-core host; test_multi_worker's TIMEOUT is 600 too.
TIMEOUT_S = 600
RTOL, ATOL = 1e-4, 1e-6


def _start(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.har_tf.distributed_scenarios", *args],
        cwd=harness.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_all(procs):
    """Waits for every process; on a failure or a timeout kills them all and fails."""
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            outputs.append(out)
            if p.returncode != 0:
                pytest.fail(f"scenario {p.args[3:]} exited {p.returncode}:\n{out[-4000:]}")
    except subprocess.TimeoutExpired:
        pytest.fail(f"a scenario ran past {TIMEOUT_S} s (a hung collective?)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outputs


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _weights(run, key, n):
    return [run[f"{key}/{i}"] for i in range(n)]


def _assert_moved(initial, final):
    """Training moved every trainable weight and moving statistic far beyond the tolerance."""
    for name, a, b in zip(initial.keys(), initial.values(), final.values(), strict=True):
        if name.endswith(("/tau", "/class_weights")):
            continue
        tolerance = ATOL + RTOL * np.max(np.abs(b))
        assert np.max(np.abs(b - a)) > 20 * tolerance, name


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    """The `mirrored` scenario's weights (by run, then name), per-step logs and errors;
    its two halves run side by side."""
    tmp = tmp_path_factory.mktemp("mirrored")
    paths = [str(tmp / f"{part}.npz") for part in scenarios.MIRRORED_PARTS]
    parts = zip(scenarios.MIRRORED_PARTS, paths, strict=True)
    _wait_all([_start("mirrored", part, path) for part, path in parts])
    scales, variants = (_load(path) for path in paths)
    names = [str(n) for n in scales["names"]]
    assert [str(n) for n in variants["names"]] == names
    # Both halves start every run from the same weights.
    for i, name in enumerate(names):
        np.testing.assert_array_equal(
            variants[f"initial/{i}"], scales[f"initial/{i}"], err_msg=name
        )
    keys = {
        **dict.fromkeys(("initial", "single_official", "sync_official", "nosync_official"), scales),
        **dict.fromkeys(("single_per_example", "sync_per_example"), scales),
        **dict.fromkeys(("single_every2", "sync_every2", "sync_ckpt"), variants),
    }
    results = {
        key: dict(zip(names, _weights(run, key, len(names)), strict=True))
        for key, run in keys.items()
    }
    logs = {**json.loads(str(scales["logs"])), **json.loads(str(variants["logs"]))}
    return results, logs, str(variants["jit_error"]), str(variants["loop_error"])


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["official", "per_example"])
def test_mirrored_synchronized_bn_matches_one_device(mirrored_run, scale):
    results, logs, _, _ = mirrored_run
    single, sync = results[f"single_{scale}"], results[f"sync_{scale}"]
    initial = {k: v[0] for k, v in results["initial"].items()}
    _assert_moved(initial, {k: v[0] for k, v in single.items()})
    for name, ref in single.items():
        (ref,) = ref  # one device
        per_replica = sync[name]
        assert per_replica.shape[0] == scenarios.REPLICAS
        for replica in per_replica:  # BN moving statistics included: every copy agrees
            np.testing.assert_allclose(replica, ref, rtol=RTOL, atol=ATOL, err_msg=name)
    # The logged metrics (running means after each step) are the global-batch values.
    assert len(logs[f"sync_{scale}"]) == len(logs[f"single_{scale}"]) == scenarios.STEPS
    for got, want in zip(logs[f"sync_{scale}"], logs[f"single_{scale}"], strict=True):
        assert set(got) == set(want) == {"loss", "ce", "reg"}
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
        assert want["reg"] > 0
    # Step 1: loss = ce + lam * reg + weight_decay / 2 * ||w||^2, each counted once.
    l2 = sum(
        float(np.sum(np.square(w)))
        for name, w in initial.items()
        if not name.endswith(("/tau", "/class_weights", "/moving_mean", "/moving_variance"))
    )
    first = logs[f"sync_{scale}"][0]
    np.testing.assert_allclose(
        first["loss"],
        first["ce"] + scenarios.LAM * first["reg"] + scenarios.WEIGHT_DECAY / 2 * l2,
        rtol=1e-5,
    )


@pytest.mark.slow
def test_mirrored_reg_every_matches_one_device(mirrored_run):
    """reg_every=2 on two replicas: the same weights and logs as on one device, where
    the kind of step is a tf.cond; and not those of the exact objective."""
    results, logs, _, _ = mirrored_run
    single, sync = results["single_every2"], results["sync_every2"]
    for name, (ref,) in single.items():
        for replica in sync[name]:
            np.testing.assert_allclose(replica, ref, rtol=RTOL, atol=ATOL, err_msg=name)
    for got, want in zip(logs["sync_every2"], logs["single_every2"], strict=True):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    # Step 0 is regularized with 2 lam: the same ce, a different loss than exact HAR's.
    first, exact = logs["sync_every2"][0], logs["single_official"][0]
    np.testing.assert_allclose(first["ce"], exact["ce"], rtol=1e-6)
    np.testing.assert_allclose(first["reg"], exact["reg"], rtol=1e-5)
    assert first["loss"] - exact["loss"] == pytest.approx(scenarios.LAM * first["reg"], rel=1e-4)
    kernel = "stem_conv/kernel"
    assert not np.allclose(single[kernel][0], results["single_official"][kernel][0], atol=1e-4)


@pytest.mark.slow
def test_mirrored_checkpointed_step_matches_one_device(mirrored_run):
    """checkpoint_layers on two replicas (segments recomputed, synchronized BN run
    again in each recomputation) gives the exact HAR run of one device."""
    results, logs, _, _ = mirrored_run
    single, ckpt = results["single_official"], results["sync_ckpt"]
    for name, (ref,) in single.items():
        for replica in ckpt[name]:  # moving statistics updated once per step
            np.testing.assert_allclose(replica, ref, rtol=RTOL, atol=ATOL, err_msg=name)
    for got, want in zip(logs["sync_ckpt"], logs["single_official"], strict=True):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_reg_every_in_a_custom_replica_loop_needs_the_kind_of_step(mirrored_run):
    """Without `regularized` a replica loop's step cannot pick its kind: a clear error."""
    _, _, _, loop_error = mirrored_run
    assert "reg_every > 1 under a multi-replica strategy needs each step's kind" in loop_error
    assert "regularized=" in loop_error


@pytest.mark.slow
def test_mirrored_without_synchronized_bn_differs_from_one_device(mirrored_run):
    """Why `synchronized_bn`: per-replica statistics change the training itself."""
    results, logs, _, _ = mirrored_run
    single, nosync = results["single_official"], results["nosync_official"]
    moving = [n for n in single if n.endswith("/moving_mean")]
    assert len(moving) == 5  # the stem's and the 4 tapped BNs'
    for name in moving:
        replicas, ref = nosync[name], single[name][0]
        # Each replica keeps its own statistics of its half of the batch...
        assert np.max(np.abs(replicas[0] - replicas[1])) > 1e3 * ATOL, name
        for replica in replicas:
            assert not np.allclose(replica, ref, rtol=RTOL, atol=ATOL), name
    # ...and the gradients, computed from per-replica statistics, differ as well.
    kernel = "stem_conv/kernel"
    assert not np.allclose(nosync[kernel][0], single[kernel][0], rtol=10 * RTOL, atol=10 * ATOL)
    assert abs(logs["nosync_official"][0]["ce"] - logs["single_official"][0]["ce"]) > 1e-3


@pytest.mark.slow
def test_jit_compile_is_refused_under_mirrored_strategy(mirrored_run):
    """Training fails with a ValueError that says why, not a device error from XLA."""
    _, _, jit_error, _ = mirrored_run
    assert "jit_compile=True fails under a multi-replica" in jit_error


@pytest.mark.slow
def test_jit_compile_is_allowed_on_one_device():
    model = HARModel(scenarios.build(synchronized_bn=False).backbone, lam=1.0)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    assert model.jit_compile is True
    x, y = scenarios.data()
    history = model.fit(x[:8], y[:8], batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["reg"][0] > 0


@pytest.mark.slow
def test_multi_worker_mirrored_workers_agree_and_match_one_device(mirrored_run, tmp_path):
    ports = ",".join(str(p) for p in harness.free_ports(2))
    paths = [str(tmp_path / f"worker{i}.npz") for i in range(2)]
    _wait_all([_start("worker", str(i), ports, paths[i]) for i in range(2)])
    workers = [_load(p) for p in paths]
    n = sum(1 for k in workers[0] if k.startswith("final/"))
    initial = _weights(workers[0], "initial", n)

    # The references: one device, `fit`, from the same initial weights (the seeded
    # build of every scenario): the `mirrored` scenario's exact HAR and reg_every=2
    # (where `fit` picks each step's kind).
    results, one_device_logs, _, _ = mirrored_run
    names = list(results["initial"])
    for name, got, (want,) in zip(names, initial, results["initial"].values(), strict=True):
        np.testing.assert_array_equal(got, want, err_msg=f"initial {name}")
    expected = [ref for (ref,) in results["single_official"].values()]
    ref_logs = one_device_logs["single_official"]
    references = {
        "": (ref_logs, expected),
        "_ckpt": (ref_logs, expected),  # checkpoint_layers: the same objective
        "_every2": (
            one_device_logs["single_every2"],
            [ref for (ref,) in results["single_every2"].values()],
        ),
    }

    _assert_moved(dict(zip(names, initial, strict=True)), dict(zip(names, expected, strict=True)))
    kernel = names.index("stem_conv/kernel")
    assert not np.allclose(references["_every2"][1][kernel], expected[kernel], atol=1e-4)
    for tag, (ref_logs, expected) in references.items():
        finals = [_weights(w, f"final{tag}", n) for w in workers]
        for name, a, b, want in zip(names, finals[0], finals[1], expected, strict=True):
            # Both workers apply the same all-reduced updates: identical up to rounding
            # (bitwise identical in practice).
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8, err_msg=name)
            np.testing.assert_allclose(a, want, rtol=RTOL, atol=ATOL, err_msg=name)
        for w in workers:
            logs = json.loads(str(w[f"logs{tag}"]))
            assert len(logs) == len(ref_logs) == scenarios.STEPS
            for got, want in zip(logs, ref_logs, strict=True):
                for key in ("loss", "ce", "reg"):
                    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_synchronized_bn_reaches_every_bn_and_survives_saving(tmp_path):
    kwargs = dict(num_classes=3, input_shape=(8, 8, 3), blocks_per_stage=1, widths=(4, 8))
    plain = cifar_resnet(**kwargs)
    synced = cifar_resnet(**kwargs, synchronized_bn=True)
    bns = [
        layer.name for layer in synced.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(bns) == 5 and "stem_bn" in bns
    assert all(synced.get_layer(n).synchronized for n in bns)
    assert not any(plain.get_layer(n).synchronized for n in bns)

    model = HARModel(synced, lam=1.0)
    loaded = harness.run_model_saving_test(model, tmp_path / "m.keras")
    assert all(loaded.backbone.get_layer(n).synchronized for n in bns)
    # On one device the synchronized path computes the same training-mode output.
    plain.set_weights(synced.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.backbone(x, training=True), plain(x, training=True), rtol=1e-4, atol=1e-5
    )
