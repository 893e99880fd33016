"""A study's blind progress table (pipeline.study.progress) on a hand-built workdir:
the rows and cells expected by hand, and never a validation or test figure."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.core import stage
from pipeline.study import progress

EVERY = 3  # the evaluated epochs of the fake runs: 3 and 6 (1-based)
VAL, TEST = 0.7777, 0.8888  # sentinels: must never reach the table


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _sparse(values: dict[int, float], epochs: int) -> list:
    """Per-epoch list with a value at the given 1-based epochs, None elsewhere."""
    return [values.get(e + 1) for e in range(epochs)]


def _done_record(fit: dict[int, tuple[float, float]], epochs: int) -> dict:
    history = {
        "loss": [1.0] * epochs,
        "fit_accuracy": _sparse({e: a for e, (a, _) in fit.items()}, epochs),
        "fit_memorized": _sparse({e: m for e, (_, m) in fit.items()}, epochs),
        "fit_clean_label_accuracy": _sparse({e: 0.5 for e in fit}, epochs),
        "val_mean_class_accuracy": _sparse({e: VAL for e in fit}, epochs),
        "test_accuracy": _sparse({e: TEST for e in fit}, epochs),
        "test_class_0_accuracy": _sparse({e: TEST for e in fit}, epochs),
    }
    return {"state": "done", "fingerprint": "f", "history": history, "test_counts": [1]}


def _epoch_logs(fit: dict[int, tuple[float, float]], epochs: int) -> list[dict]:
    """A checkpoint's history.partial.json: one dict of logs per epoch done."""
    logs = []
    for e in range(1, epochs + 1):
        entry = {"loss": 1.0, "accuracy": 0.9, "reg": 0.1}
        if e in fit:
            entry.update(
                fit_accuracy=fit[e][0],
                fit_memorized=fit[e][1],
                val_mean_class_accuracy=VAL,
                val_accuracy=VAL,
                test_accuracy=TEST,
            )
        logs.append(entry)
    return logs


@pytest.fixture
def workdir(tmp_path):
    root = tmp_path / "study"
    records = root / "study" / "records" / "main"
    _write(records / "seed0" / "erm.json", _done_record({3: (0.95, 0.4), 6: (1.0, 1.0)}, 6))
    _write(records / "seed0" / "har_lam16.json", _done_record({3: (0.9, 0.25), 6: (0.981, 0.5)}, 6))
    _write(records / "seed0" / "har_lam4.json", _done_record({3: (0.9, 0.3), 6: (1.0, 0.994)}, 6))
    _write(records / "seed10" / "erm.json", _done_record({3: (0.5, 0.125), 6: (0.75, 0.25)}, 6))
    _write(records / "seed2" / "har_lam64.json", {"state": "failed", "error": "diverged"})
    cell = root / "cells" / "main" / "seed2"
    ckpt = os.path.join("checkpoints", "history.partial.json")
    _write(
        cell / "runs" / "unif_lam4" / "train.partial" / "unif_lam4" / ckpt,
        _epoch_logs({3: (0.8, 0.1)}, 4),
    )
    _write(cell / "pretrain.partial" / "half_b" / ckpt, _epoch_logs({}, 2))
    # A finished stage's directory is not in progress, even with a checkpoint left in it.
    _write(cell / "runs" / "erm" / "train" / "erm" / ckpt, _epoch_logs({3: (0.1, 0.1)}, 3))
    return str(root)


EXPECTED = """\
| run | state | epochs | epoch 3 | epoch 6 |
|---|---|---|---|---|
| main/seed0/erm | done | 6 | 95.0 / 40.0 | 100.0 / 100.0 |
| main/seed0/har_lam4 | done | 6 | 90.0 / 30.0 | 100.0 / 99.4 |
| main/seed0/har_lam16 | done | 6 | 90.0 / 25.0 | 98.1 / 50.0 |
| main/seed2/har_lam64 | failed | 0 |  |  |
| main/seed2/pretrain half_b | paused | 2 |  |  |
| main/seed2/unif_lam4 | paused | 4 | 80.0 / 10.0 |  |
| main/seed10/erm | done | 6 | 50.0 / 12.5 | 75.0 / 25.0 |
"""


def test_the_table_holds_each_run_and_only_training_side_figures(workdir):
    out = progress.progress(workdir=workdir)
    head, table = out.split("\n\n", 1)
    assert head.startswith("4 done, 1 failed, 0 training, 2 paused; ")
    assert table == EXPECTED
    for sentinel in (VAL, TEST):  # in any rendering: fraction or percent
        assert str(sentinel) not in out and f"{100 * sentinel:.1f}" not in out


def test_a_records_directory_alone_lists_its_records(workdir):
    out = progress.progress(records_dir=os.path.join(workdir, "study", "records"))
    assert out.startswith("4 done, 1 failed, 0 training, 0 paused; ")
    rows = [line.split(" | ")[0].lstrip("| ") for line in out.splitlines()[4:]]
    assert rows == [
        "main/seed0/erm",
        "main/seed0/har_lam4",
        "main/seed0/har_lam16",
        "main/seed2/har_lam64",
        "main/seed10/erm",
    ]


def _states(workdir) -> dict[str, str]:
    rows = [line.split(" | ") for line in progress.progress(workdir=workdir).splitlines()[4:]]
    return {r[0].lstrip("| "): r[1] for r in rows}


def test_under_way_is_training_while_its_lock_holder_lives_and_paused_after(workdir):
    """A real process holds the run's lock (pipeline.core.workdir_lock) and the cell's
    (pretraining's); once it has exited, both runs read as paused. Holding the lock is
    not probed, so the table never takes a lock a study process may reach for."""
    run = os.path.join(workdir, "cells", "main", "seed2", "runs", "unif_lam4")
    cell = os.path.join(workdir, "cells", "main", "seed2")
    hold = (
        "import sys, time\n"
        "from pipeline.core import workdir_lock\n"
        "with workdir_lock.held(sys.argv[1]), workdir_lock.held(sys.argv[2]):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, run, cell], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        states = _states(workdir)
        assert states["main/seed2/unif_lam4"] == "training"
        assert states["main/seed2/pretrain half_b"] == "training"
        assert progress.progress(workdir=workdir).startswith(
            "4 done, 1 failed, 2 training, 0 paused"
        )
    finally:
        holder.kill()
        holder.wait()
    states = _states(workdir)  # its PID is still in the lock files; the process is gone
    assert states["main/seed2/unif_lam4"] == states["main/seed2/pretrain half_b"] == "paused"


def test_bad_input_names_the_problem(workdir, tmp_path):
    with pytest.raises(stage.PipelineError, match="exactly one of --workdir and --records"):
        progress.progress()
    with pytest.raises(stage.PipelineError, match="exactly one of"):
        progress.progress(workdir=workdir, records_dir=workdir)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(stage.PipelineError, match=f"--workdir {missing} is not a directory"):
        progress.progress(workdir=missing)
    with pytest.raises(stage.PipelineError, match=f"--records {missing} is not a directory"):
        progress.progress(records_dir=missing)
    bad = os.path.join(workdir, "study", "records", "main", "seed0", "erm.json")
    with open(bad, "w") as f:
        f.write("{half")
    with pytest.raises(stage.PipelineError, match=f"^{bad} is unreadable"):
        progress.progress(workdir=workdir)
    _write(bad, {"state": "running"})
    with pytest.raises(stage.PipelineError, match=f"^{bad} is not a run record$"):
        progress.progress(workdir=workdir)


def test_the_program_prints_the_table_and_one_error_line(workdir, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pipeline.study.progress", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            timeout=300,
        )

    ok = run(f"--workdir={workdir}")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.endswith(EXPECTED)
    bad = run(f"--records={tmp_path / 'nowhere'}")
    assert bad.returncode == 1 and bad.stdout == ""
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: progress: --records {tmp_path / 'nowhere'} is not a directory"]
