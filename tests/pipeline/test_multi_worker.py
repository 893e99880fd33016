"""strategy = "multi_worker": the train and pretrain stages on two worker processes.

Two `python -m pipeline.train` processes on 127.0.0.1, given TF_CONFIG, share one
workdir (as machines share a filesystem). The stage completes with its outputs
written once, by the chief; the workers end with identical weights (each checks
it against the chief's); with worker 1 killed mid-epoch and both rerun, the stage
ends exactly where an uninterrupted run ends.

Against one device: the reference of the model tests (tests/har_tf/
test_distributed.py): `fit` on one device with ordinary BatchNorm, over the same
global batches, with their tolerance, rtol 1e-4 / atol 1e-6 on every weight and
moving statistic. The stage runs in float64 here (Keras's dtype policy, set by
the wrapper below). In float32 two workers can miss one device by 1e-4 after a
single step on Fashion-MNIST batches: the gradient of a kernel that feeds a
synchronized BatchNormalization is, on each worker, a large term that cancels
against the other worker's (it sums to the small one-device gradient only over
the global batch), so the float32 rounding of each worker's term is amplified
(the measurements: docs/DISTRIBUTED.md, "float32 and several workers"). The
model tests' small random images do not reach that regime.

Pretrain runs likewise on its half A (78 examples, global batches of 26).

The data: the smoke config cut to 256 training images (162 after its class
imbalance), global batches of 54 (3 steps an epoch: under several workers the
last, partial batch is dropped, so a batch size that divides 162 gives one device
the same batches), 2 epochs; the HAR run is "uniform" (tau = 1) so that only
preprocess is needed first.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import fashion_mnist_hetero
from pipeline import cli, config_check, train
from pipeline.core.stage import PipelineError
from pipeline.training import modeling, multi_worker
from tests import harness

CONFIG = harness.config()
DATA = ["--config.data.limit_train=256", "--config.data.limit_test=100", "--quiet"]
TRAIN = [
    *DATA,
    "--config.train.runs.har.regularizer=uniform",
    "--config.train.epochs=2",
    "--config.train.batch_size=54",
]
SYNC_BN = "--config.model.synchronized_bn=True"
WORKERS = [*TRAIN, "--config.train.strategy=multi_worker", SYNC_BN]
PRETRAIN = ["--config.pretrain.epochs=2", "--config.pretrain.batch_size=26"]
PRETRAIN_WORKERS = [*DATA, *PRETRAIN, "--config.pretrain.strategy=multi_worker", SYNC_BN]
RUNS = ("erm", "har")
RTOL, ATOL = 1e-4, 1e-6  # tests/har_tf/test_distributed.py's
TIMEOUT = 600
# Keras in float64, one thread per TensorFlow pool (two workers share this
# machine's cores); then `python -m <stage>` (STAGE_MAIN % stage).
FLOAT64 = (
    "import keras, tensorflow as tf;"
    "tf.config.threading.set_intra_op_parallelism_threads(1);"
    "tf.config.threading.set_inter_op_parallelism_threads(1);"
    "keras.config.set_dtype_policy('float64');"
)
STAGE_MAIN = FLOAT64 + "import runpy; runpy.run_module('%s', run_name='__main__', alter_sys=True)"
# The one-device references, with the workers' inputs: preprocess, pretrain and
# train as their programs run them, in one process (one start-up, not three).
ONE_DEVICE_MAIN = (
    FLOAT64
    + """
import logging
from absl import app
from pipeline import cli, preprocess, pretrain, train

logging.getLogger("apache_beam").setLevel(logging.WARNING)  # as preprocess's main


def main(argv):
    for name, stage in (("preprocess", preprocess), ("pretrain", pretrain), ("train", train)):
        # As in a fresh program: Keras's global state (layer names, and with them the
        # weights' paths) anew, and float64 set again after it.
        keras.utils.clear_session()
        keras.config.set_dtype_policy("float64")
        cli.run_main(name, stage.run)


cli.define_common_flags()
cli.define_option_flags(["preprocess"])
app.run(main, flags_parser=cli.parse_flags)
"""
)


def _env(tf_config=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(workdir, *args, main: str, tf_config=None) -> subprocess.Popen:
    """`python -c main` with the smoke config, `workdir` and `args`."""
    return subprocess.Popen(
        [sys.executable, "-c", main, f"--config={CONFIG}", f"--workdir={workdir}", *args],
        cwd=harness.REPO,
        env=_env(tf_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(procs: list[subprocess.Popen], returncode: int = 0) -> list[str]:
    """Every process's output, once all exited with `returncode` (else fails)."""
    deadline = time.time() + TIMEOUT
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.time()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == returncode, out[-4000:]
    return outputs


def _two_workers(workdir, args=WORKERS, stage="pipeline.train") -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in harness.free_ports(2)]
    return [
        _start(
            workdir,
            *args,
            main=STAGE_MAIN % stage,
            tf_config={"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    ]


def _weights(workdir, run: str, stage: str = "train") -> dict[str, np.ndarray]:
    model = modeling.load_model(os.path.join(workdir, stage, run, "model.keras"))
    return {w.path: np.asarray(w.numpy()) for w in model.weights}


def _history(workdir, run: str, stage: str = "train") -> dict:
    with open(os.path.join(workdir, stage, run, "history.json")) as f:
        return json.load(f)


def _assert_trained_alike(got_dir, want_dir, run: str, stage: str) -> None:
    """Weights within the model tests' tolerance; histories to 1e-5."""
    got, want = _weights(got_dir, run, stage), _weights(want_dir, run, stage)
    assert got.keys() == want.keys()
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=RTOL, atol=ATOL, err_msg=name)
    h_got, h_want = _history(got_dir, run, stage), _history(want_dir, run, stage)
    assert h_got.keys() == h_want.keys()
    for key in h_want:
        np.testing.assert_allclose(h_got[key], h_want[key], rtol=1e-5, err_msg=key)


def _files(directory) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, f), directory)
        for root, _, files in os.walk(directory)
        for f in files
    )


def _copy_inputs(one_device, workdir) -> None:
    """The workdir `one_device` as its preprocess stage left it: its top-level
    training stages left out (a deeper entry of the same name is copied)."""
    top = os.path.abspath(one_device)

    def training_stages(directory, names):
        return {"pretrain", "train"} & set(names) if os.path.abspath(directory) == top else set()

    shutil.copytree(one_device, workdir, ignore=training_stages)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """A workdir holding the cut smoke config's preprocess stage (the workers' inputs)
    and the one-device references: its pretrain and train stages (float64)."""
    workdir = tmp_path_factory.mktemp("multi_worker") / "one_device"
    _wait([_start(workdir, *TRAIN, *PRETRAIN, main=ONE_DEVICE_MAIN)])
    return workdir


@pytest.fixture(scope="module")
def two(one_device, tmp_path_factory):
    """A workdir whose train stage ran on two workers, uninterrupted; their outputs."""
    workdir = tmp_path_factory.mktemp("two") / "w"
    _copy_inputs(one_device, workdir)
    return workdir, _wait(_two_workers(workdir))


@pytest.mark.slow
def test_two_workers_write_once_agree_and_train_as_one_device(one_device, two):
    workdir, outputs = two
    # Written once, by the chief: what a one-device train stage writes, no .partial.
    for run in RUNS:
        files = _files(workdir / "train" / run)
        assert {"history.json", "model.keras"} <= set(files)
        assert all(
            f.startswith("tensorboard/") for f in set(files) - {"history.json", "model.keras"}
        )
        assert len(_history(workdir, run)["loss"]) == 2
        assert "test_accuracy" in _history(workdir, run)  # the per-epoch test pass
    assert sorted(os.listdir(workdir)) == ["pipeline.lock", "preprocess", "schema", "train"]
    assert os.path.isfile(workdir / "train" / "metadata.json")
    # Each worker compared its weights with the chief's after each run (a collective).
    for out in outputs:
        assert out.count("Weights identical to the chief's") == len(RUNS), out[-3000:]

    for run in RUNS:
        _assert_trained_alike(workdir, one_device, run, "train")
    # The runs trained: the loss moved far beyond that tolerance.
    loss = _history(one_device, "erm")["loss"]
    assert abs(loss[1] - loss[0]) > 1e-2


@pytest.mark.slow
def test_pretrain_on_two_workers_writes_once_and_trains_as_one_device(one_device, tmp_path):
    two, one = tmp_path / "two", one_device
    _copy_inputs(one_device, two)
    outputs = _wait(_two_workers(two, PRETRAIN_WORKERS, "pipeline.pretrain"))

    # Written once, by the chief: the one-device stage's files, no .partial left.
    def written(w):
        return [f for f in _files(w / "pretrain") if "tensorboard/" not in f]

    assert written(two) == written(one)
    assert {"split.npz", "model.keras", "history.json"} <= set(written(one))
    assert sorted(os.listdir(two)) == ["pipeline.lock", "preprocess", "pretrain", "schema"]
    for out in outputs:  # the weights checked against the chief's
        assert out.count("Weights identical to the chief's") == 1, out[-3000:]
    with (
        np.load(two / "pretrain" / "split.npz") as got,
        np.load(one / "pretrain" / "split.npz") as want,
    ):
        for half in ("half_a", "half_b"):
            np.testing.assert_array_equal(got[half], want[half])
    _assert_trained_alike(two, one, "", "pretrain")
    loss = _history(one, "", "pretrain")["loss"]
    assert abs(loss[1] - loss[0]) > 1e-2  # it trained far beyond the tolerance


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_resumes_to_the_uninterrupted_result(one_device, two, tmp_path):
    killed = tmp_path / "killed"
    _copy_inputs(one_device, killed)
    procs = _two_workers(killed)
    ckpt = killed / "train.partial" / RUNS[0] / "checkpoints" / "epoch-0001.weights.h5"
    deadline = time.time() + TIMEOUT
    while not ckpt.exists() and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.05)
    assert ckpt.exists() and procs[1].poll() is None, "no checkpoint to resume from"
    procs[1].send_signal(signal.SIGKILL)  # in epoch 2 of the first run
    procs[1].communicate()
    # Worker 0 now waits on worker 1 in a collective (or fails): end it too.
    procs[0].kill()
    procs[0].communicate()
    assert not (killed / "train").exists()
    _wait(_two_workers(killed))
    workdir, _ = two
    for run in RUNS:
        got, want = _weights(killed, run), _weights(workdir, run)
        for name, ref in want.items():
            np.testing.assert_array_equal(got[name], ref, err_msg=name)
        assert _history(killed, run) == _history(workdir, run)


@pytest.mark.slow
def test_multi_worker_without_tf_config_is_a_one_line_error(
    one_device, tmp_path, monkeypatch, capsys
):
    # In this process: the error comes before any TensorFlow op, from the shared
    # body of every stage's main (a stage program adds only its flag parsing).
    workdir = tmp_path / "w"
    _copy_inputs(one_device, workdir)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = fashion_mnist_hetero.get_config("smoke")
    config.train.strategy = "multi_worker"
    config.model.synchronized_bn = True
    with pytest.raises(SystemExit) as exit_:
        cli.run_stage_main(
            "train", train.run, config, str(workdir), check=config_check.check_config
        )
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: train: strategy 'multi_worker' needs TF_CONFIG, which is not set; set it "
        "on every worker as docs/DISTRIBUTED.md shows"
    ], err
    assert sorted(os.listdir(workdir)) == ["pipeline.lock", "preprocess", "schema"]


def _task(tf_config) -> multi_worker.Task:
    return multi_worker.task_from_tf_config(json.dumps(tf_config))


def test_tf_config_names_the_chief():
    workers = {"worker": ["a:1", "b:2", "c:3"]}
    assert _task({"cluster": workers, "task": {"type": "worker", "index": 0}}).chief
    task = _task({"cluster": workers, "task": {"type": "worker", "index": 2}})
    assert (task.index, task.count, task.chief) == (2, 3, False)
    # With a "chief" task, worker 0 is not the chief.
    cluster = {"chief": ["a:1"], "worker": ["b:2"]}
    assert _task({"cluster": cluster, "task": {"type": "chief", "index": 0}}).chief
    task = _task({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert (task.index, task.chief) == (1, False)


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "needs TF_CONFIG, which is not set"),
        ("", "needs TF_CONFIG, which is not set"),
        ("{not json", "TF_CONFIG is not a cluster description"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', "TF_CONFIG is not a cluster description"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
            "cluster has 1 task(s); strategy 'multi_worker' needs 2 or more",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
            "task 'worker' 2 is not in its cluster",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}',
            "task 'ps' 0 is not in its cluster",
        ),
    ],
)
def test_a_bad_tf_config_is_a_clear_error(raw, message):
    with pytest.raises(PipelineError) as e:
        multi_worker.task_from_tf_config(raw)
    assert message in str(e.value)


def test_pipeline_run_refuses_multi_worker(tmp_path):
    from configs import fashion_mnist_hetero
    from pipeline import run

    config = fashion_mnist_hetero.get_config("smoke")
    config.train.strategy = "multi_worker"
    with pytest.raises(PipelineError, match="run the stages alone instead"):
        run.run_pipeline(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
