"""config.train.strategy = "multi_worker": the train stage on two worker processes.

Two `python -m pipeline.train` processes on 127.0.0.1, given TF_CONFIG: the stage
completes with its outputs written once, by the chief; with one worker killed
mid-epoch and both rerun, it ends exactly where an uninterrupted run ends. Against
one process with no TF_CONFIG (one worker, one device) on the same global batches,
the weights differ after one step by about 1e-4 (an open issue, xfail below). The
inputs (preprocess, pretrain, estimate_tau) are made once, on one process, and
copied into each workdir. Synchronized BatchNormalization (as several replicas
need) and batches of 640 (3 steps per epoch), so that the run is short.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import modeling

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "fashion_mnist_hetero.py") + ":smoke"
MODEL = ["--config.model.synchronized_bn=True", "--quiet"]
ARGS = [
    *MODEL,
    "--config.train.strategy=multi_worker",
    "--config.train.epochs=3",
    "--config.train.batch_size=640",
]
RUNS = ("erm", "har")
TIMEOUT = 900


def _env(tf_config=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _stage(module: str, workdir, *args, tf_config=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, f"--config={CONFIG}", f"--workdir={workdir}", *args],
        cwd=REPO,
        env=_env(tf_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.time()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _two_workers(workdir) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    return [
        _stage(
            "pipeline.train",
            workdir,
            *ARGS,
            tf_config={"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    ]


def _weights(workdir, run: str) -> list[np.ndarray]:
    path = os.path.join(workdir, "train", run, "model.keras")
    return modeling.load_model(path).get_weights()


def _history(workdir, run: str) -> dict:
    with open(os.path.join(workdir, "train", run, "history.json")) as f:
        return json.load(f)


def _assert_same_training(a, b, rtol: float, atol: float) -> None:
    for run in RUNS:
        for u, v in zip(_weights(a, run), _weights(b, run), strict=True):
            np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)
        ha, hb = _history(a, run), _history(b, run)
        assert ha.keys() == hb.keys()
        for k in ha:
            np.testing.assert_allclose(ha[k], hb[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A workdir holding the smoke config's preprocess, pretrain and estimate_tau."""
    workdir = tmp_path_factory.mktemp("multi_worker") / "inputs"
    for module in ("pipeline.preprocess", "pipeline.pretrain", "pipeline.estimate_tau"):
        _wait([_stage(module, workdir, *MODEL)])
    return workdir


def _copy(inputs, path):
    shutil.copytree(inputs, path)
    return path


@pytest.fixture(scope="module")
def two(inputs, tmp_path_factory):
    """A workdir whose train stage ran on two workers, uninterrupted."""
    workdir = _copy(inputs, tmp_path_factory.mktemp("two") / "w")
    _wait(_two_workers(workdir))
    return workdir


@pytest.mark.slow
def test_two_workers_write_the_outputs_once_and_resume_after_a_kill(inputs, two, tmp_path):
    for run in RUNS:
        assert sorted(os.listdir(two / "train" / run)) == [
            "history.json",
            "model.keras",
            "tensorboard",
        ]
        assert len(_history(two, run)["loss"]) == 3
    assert not os.path.exists(two / "train.partial")
    assert os.path.isfile(two / "train" / "metadata.json")

    # Kill worker 1 once an epoch's checkpoint is written, then worker 0 (it waits on
    # worker 1 in a collective), and rerun both: they resume from the chief's
    # checkpoint and end exactly where the uninterrupted run ended.
    killed = _copy(inputs, tmp_path / "killed")
    procs = _two_workers(killed)
    ckpt = killed / "train.partial" / RUNS[0] / "checkpoints" / "epoch-0001.weights.h5"
    deadline = time.time() + TIMEOUT
    while not ckpt.exists() and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.1)
    assert ckpt.exists() and procs[1].poll() is None, "no checkpoint to resume from"
    for p in (procs[1], procs[0]):
        p.kill()
        p.communicate()
    assert not (killed / "train").exists()
    _wait(_two_workers(killed))
    _assert_same_training(two, killed, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="open: two workers end about 1e-4 away from one device after one step "
    "(not float reassociation); see docs/DISTRIBUTED.md",
)
def test_two_workers_train_as_one_device(inputs, two, tmp_path):
    one = _copy(inputs, tmp_path / "one")
    _wait([_stage("pipeline.train", one, *ARGS)])
    _assert_same_training(one, two, rtol=1e-4, atol=1e-6)
