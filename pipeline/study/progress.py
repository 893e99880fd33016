r"""A study's progress without its results, to watch a running study blind.

  python -m pipeline.study.progress --workdir=DIR       # records and runs in training
  python -m pipeline.study.progress --records=RECORDS   # saved records only

Prints one markdown table: each run that has a record (done or failed) or is under way
(a checkpointed train stage, or a cell's pretraining: "training" while the process
that last took its lock is alive, "paused" when none is, e.g. after the study's
processes were stopped; it resumes from the checkpoint), its epochs, and after each
evaluated epoch only its training-side metrics, `fit_accuracy / fit_memorized` in %
(training accuracy against the noisy labels, and the wrongly-labelled training examples
predicted as their wrong label: the regime a run is in). No validation or test figure
is read into the table, so a protocol that forbids looking at them until its plan is
fixed (docs/RESULTS.md, Study 2) can still follow its runs; `--aggregate_only` is the
unblinded report. Records are shown as they are: one left by another config or code
version (which the runner ignores) is not told apart here.
"""

from __future__ import annotations

import glob
import json
import os
import re

from absl import app, flags

from pipeline import cli
from pipeline.core import stage, workdir_lock
from pipeline.study import records
from pipeline.training import epoch_eval, modeling

SHOWN = (epoch_eval.FIT_PREFIX + "accuracy", epoch_eval.FIT_PREFIX + "memorized")


def blind(history: dict[str, list]) -> dict[str, list]:
    """A record's history (key -> per-epoch values) with only the SHOWN keys."""
    return {k: v for k, v in history.items() if k in SHOWN}


def _columns(epoch_logs: list[dict]) -> dict[str, list]:
    """Per-epoch logs (a checkpoint's history) as key -> per-epoch values, SHOWN only."""
    return {k: [logs.get(k) for logs in epoch_logs] for k in SHOWN}


def _read(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise stage.PipelineError(f"{path} is unreadable ({e})") from e


def finished(records_dir: str) -> dict[str, dict]:
    """ "<setting>/seed<k>/<run>" -> {"state", "epochs", "history"} of every record."""
    out = {}
    for key in records.keys(records_dir):
        path = records.file_in(records_dir, key)
        record = _read(path)
        state = record.get("state") if isinstance(record, dict) else None
        if state not in ("done", "failed"):
            raise stage.PipelineError(f"{path} is not a run record")
        history = record.get("history") or {}
        out[key] = {
            "state": state,
            "epochs": len(history.get("loss", [])),
            "history": blind(history),
        }
    return out


def _holder_alive(directory: str) -> bool:
    """Whether the process that last took `directory`'s lock (pipeline.core.workdir_lock,
    whose file keeps the holder's PID) is alive. Read only: probing the lock itself would
    make a study process that reaches for it at that moment skip the run. A PID reused
    by an unrelated process after the holder died reads as alive."""
    pid = workdir_lock.last_holder_pid(directory)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return True
    except (OSError, OverflowError):
        return False
    return True


def training(workdir: str) -> dict[str, dict]:
    """Key -> {"state": "training" | "paused", "epochs", "history"} of every checkpointed
    stage in progress: a run's train stage ("<setting>/seed<k>/<run>") and a cell's
    pretraining ("<setting>/seed<k>/pretrain", one entry per cross-fitted half). A run's
    lock is its run directory's, pretraining's its cell's."""
    ckpt = os.path.join(modeling.CHECKPOINTS, modeling.CHECKPOINT_HISTORY)
    cells = os.path.join(glob.escape(workdir), "cells", "*", "seed*")
    patterns = {
        "run": os.path.join(cells, "runs", "*", "train.partial", "*", ckpt),
        "pretrain": os.path.join(cells, "pretrain.partial", ckpt),
        "half": os.path.join(cells, "pretrain.partial", "*", ckpt),
    }
    out = {}
    for kind, pattern in patterns.items():
        for path in glob.glob(pattern):
            parts = os.path.relpath(path, os.path.join(workdir, "cells")).split(os.sep)
            cell = "/".join(parts[:2])
            name = {"run": parts[3], "pretrain": "pretrain"}.get(kind, f"pretrain {parts[3]}")
            epoch_logs = _read(path)
            locked = os.path.join(workdir, "cells", *parts[:2])
            if kind == "run":
                locked = os.path.join(locked, "runs", parts[3])
            out[f"{cell}/{name}"] = {
                "state": "training" if _holder_alive(locked) else "paused",
                "epochs": len(epoch_logs),
                "history": _columns(epoch_logs),
            }
    return out


def _natural(key: str) -> list:
    """Sort key with numbers compared as numbers (seed2 < seed10, har_lam4 < har_lam16)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _at(values: list, epoch: int):
    return values[epoch] if epoch < len(values) else None


def _cell(history: dict[str, list], epoch: int) -> str:
    values = [_at(history.get(k, []), epoch) for k in SHOWN]
    if all(v is None for v in values):
        return ""
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)


def table(rows: dict[str, dict]) -> str:
    """Markdown: run, state, epochs, then one column per epoch (1-based) at which any
    row has a SHOWN value, each cell "fit_accuracy / fit_memorized" in %."""
    evaluated = sorted(
        {
            e
            for row in rows.values()
            for values in row["history"].values()
            for e, v in enumerate(values)
            if v is not None
        }
    )
    head = ["run", "state", "epochs"] + [f"epoch {e + 1}" for e in evaluated]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(rows, key=_natural):
        row = rows[key]
        cells = [key, row["state"], str(row["epochs"])]
        cells += [_cell(row["history"], e) for e in evaluated]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def progress(*, workdir: str | None = None, records_dir: str | None = None) -> str:
    """The table of a study workdir (its records and what trains now), or of a records
    directory alone."""
    if (workdir is None) == (records_dir is None):
        raise stage.PipelineError("give exactly one of --workdir and --records")
    if workdir is not None:
        if not os.path.isdir(workdir):
            raise stage.PipelineError(f"--workdir {workdir} is not a directory")
        records_dir = records.directory(workdir)
        rows = finished(records_dir) if os.path.isdir(records_dir) else {}
        rows.update(training(workdir))
    elif not os.path.isdir(records_dir):
        raise stage.PipelineError(f"--records {records_dir} is not a directory")
    else:
        rows = finished(records_dir)
    counts = {
        s: sum(r["state"] == s for r in rows.values())
        for s in ("done", "failed", "training", "paused")
    }
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    note = "fit_accuracy / fit_memorized, % (training side only; no validation or test figure)"
    return f"{summary}; {note}\n\n" + table(rows)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        print(progress(workdir=flags.FLAGS.workdir, records_dir=flags.FLAGS.records), end="")
    except stage.PipelineError as e:
        cli.fail(e, "progress: ", verbose=False)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A study's workdir (records and runs training now).")
    flags.DEFINE_string("records", None, "A records directory alone (e.g. one saved in docs).")
    app.run(main)
