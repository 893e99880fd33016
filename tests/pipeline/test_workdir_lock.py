"""The workdir lock (pipeline.core.workdir_lock): a second process is refused at once,
touching nothing, and a killed holder never leaves a stale lock."""

import os
import re
import signal
import subprocess
import sys

import pytest

from configs import fashion_mnist_hetero
from pipeline.core import stage, workdir_lock
from tests import harness

CONFIG = harness.config()
# Holds the lock of argv[1] until killed (a second, real process).
HOLDER = (
    "import sys, time\n"
    "from pipeline.core import workdir_lock\n"
    "with workdir_lock.held(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A workdir with a leftover `train.partial`, locked by another live process."""
    workdir = str(tmp_path / "work")
    os.makedirs(os.path.join(workdir, "train.partial"))
    with open(os.path.join(workdir, "train.partial", "epoch-0001.weights.h5"), "w") as f:
        f.write("live")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, workdir], cwd=harness.REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield workdir, proc
    proc.kill()
    proc.wait()


def _untouched(workdir):
    assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE, "train.partial"]
    assert os.listdir(os.path.join(workdir, "train.partial")) == ["epoch-0001.weights.h5"]


def test_a_second_process_is_refused_in_process(holder):
    workdir, proc = holder
    with pytest.raises(stage.PipelineError) as e:
        with workdir_lock.held(workdir):
            pass
    assert re.match(
        rf"workdir {re.escape(workdir)} is in use by PID {proc.pid} \(started \d{{4}}-",
        str(e.value),
    ), str(e.value)
    _untouched(workdir)


def test_a_killed_holder_leaves_no_stale_lock(holder):
    workdir, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))  # file stays...
    with workdir_lock.held(workdir):  # ...but the lock died with its process
        with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
            assert f.read().split()[0] == str(os.getpid())


def test_the_lock_is_released_on_exit_and_on_error(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(ValueError):
        with workdir_lock.held(workdir):
            raise ValueError("boom")
    with workdir_lock.held(workdir):
        pass


def test_the_lock_file_is_no_stage_output_and_changes_no_stage_state(tmp_path):
    # A stage completed under the lock is current, with the lock held and after,
    # whoever held it last (the file's content changes with each holder), and
    # making it, setting it aside or discarding stale copies leaves the lock file be.
    workdir = str(tmp_path)
    config = fashion_mnist_hetero.get_config("smoke")
    fingerprint = stage.fingerprints(config)["preprocess"]
    lock_path = os.path.join(workdir, workdir_lock.LOCK_FILE)
    with workdir_lock.held(workdir):
        with stage.stage_output(workdir, "preprocess", config) as out:
            stage.write_json(os.path.join(out, "manifest.json"), {})
        assert stage.state(workdir, "preprocess", fingerprint) == "current"
        recorded = stage.read_json(os.path.join(workdir, "preprocess", stage.METADATA))["files"]
        assert sorted(recorded) == ["manifest.json"]
    with open(lock_path, "w") as f:
        f.write("4242 2026-01-01T00:00:00Z\n")  # as another process leaves it
    assert stage.state(workdir, "preprocess", fingerprint) == "current"
    assert stage.fingerprints(config)["preprocess"] == fingerprint
    aside = stage.set_aside(workdir, "preprocess")
    stage.discard_stale(workdir, "preprocess")
    assert not os.path.exists(aside)
    assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]


@pytest.mark.parametrize("module", ["pipeline.run", "pipeline.train"])
def test_a_second_cli_is_refused_and_touches_nothing(holder, module):
    workdir, proc = holder
    result = harness.run_module(module, f"--config={CONFIG}", f"--workdir={workdir}", "--quiet")
    assert result.returncode != 0
    assert f"workdir {workdir} is in use by PID {proc.pid} (started " in result.stderr
    assert "Traceback" not in result.stderr
    _untouched(workdir)
