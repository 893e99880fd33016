"""Run records: one small JSON file per finished study run, all that its report reads.

A study's results are its run records, <workdir>/study/records/<setting>/seed<k>/
<run>.json: the run's train fingerprint, its state ("done" or "failed"), and for a done
run the per-epoch metrics the report uses (from its history.json), its cell's test class
counts, the tau it trained with (HAR runs), its train stage's start and end times and
the commit that trained it (`code`; absent from records written before it was kept,
Study 2's among them); for a failed run, the error. The runner counts a run whose record
carries its fingerprint as finished and the report (pipeline.study.report) reads records
only, so the records alone carry a study's progress and results. Copy DIR/study/records
into a new study workdir (another machine, a lost disk, records kept beside the docs)
and the study reruns only the runs without a record, and reports the same numbers:

  mkdir -p NEW/study && cp -r DIR/study/records NEW/study/

A record is written when its run finishes, and by `sync` for runs finished by code
that wrote none. A record whose fingerprint is not the job's (another config or code
version) is ignored, as a stale stage is.
"""

from __future__ import annotations

import glob
import json
import os

from pipeline.core import stage
from pipeline.training import epoch_eval, training_set

RECORDS = "records"  # under <workdir>/study/
FORMAT = 1
# The history keys a record keeps: the report's (pipeline.study.report.run_metrics,
# selections) and the loss, which gives the number of epochs.
_KEPT = (
    "loss",
    epoch_eval.TEST_ACCURACY,
    epoch_eval.VAL_PREFIX + "mean_class_accuracy",
    epoch_eval.FIT_PREFIX + "accuracy",
    epoch_eval.FIT_PREFIX + "memorized",
    epoch_eval.FIT_PREFIX + "clean_label_accuracy",
)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What the study and its report read of a record, by state (a record edited by hand
# or cut short must stop the study with its name, not a KeyError in the report).
FIELDS = {
    "done": {
        "history": lambda h: isinstance(h, dict) and isinstance(h.get("loss"), list),
        "test_counts": lambda c: isinstance(c, list),
        "tau": lambda t: t is None or isinstance(t, list),
        "started": _number,
        "finished": _number,
    },
    "failed": {"error": lambda e: isinstance(e, str)},
}


def _kept(key: str) -> bool:
    # Per-class test accuracies, and per-class validation accuracies (the standard
    # error of the selection score).
    return key in _KEPT or any(
        key.startswith(p + "class_") for p in (epoch_eval.PREFIX, epoch_eval.VAL_PREFIX)
    )


def file_in(records_dir: str, key: str) -> str:
    """The record file of run `key` ("<setting>/seed<k>/<run>") in a records directory
    (a workdir's study/records or a copy of it, as docs/results/<study>/records)."""
    return os.path.join(records_dir, *key.split("/")) + ".json"


def directory(workdir: str) -> str:
    """A study workdir's records directory."""
    return os.path.join(workdir, "study", RECORDS)


def path(workdir: str, key: str) -> str:
    """The record file of run `key` of a study workdir."""
    return file_in(directory(workdir), key)


def keys(records_dir: str) -> list[str]:
    """The key of every record file in a records directory, sorted."""
    found = glob.glob(file_in(glob.escape(records_dir), "*/seed*/*"))
    return sorted(
        "/".join(os.path.relpath(p, records_dir)[: -len(".json")].split(os.sep)) for p in found
    )


def _load(p: str) -> dict | None:
    """The record file at `p` (None if absent); PipelineError if it is no run record."""
    if not os.path.isfile(p):
        return None
    try:
        with open(p) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise stage.PipelineError(
            f"run record {p} is unreadable ({e}); delete it to rerun that run"
        ) from e
    if not isinstance(record, dict) or record.get("state") not in ("done", "failed"):
        raise stage.PipelineError(f"run record {p} is not a run record; delete it to rerun")
    return record


def read(workdir: str, key: str, fingerprint: str) -> dict | None:
    """Run `key`'s record if it has this fingerprint (None if absent or stale)."""
    p = path(workdir, key)
    record = _load(p)
    if record is None or record.get("fingerprint") != fingerprint:
        return None
    missing = [k for k, ok in FIELDS[record["state"]].items() if not ok(record.get(k))]
    if missing:
        raise stage.PipelineError(
            f"run record {p} is not a {record['state']} run record: {', '.join(missing)} "
            "missing or malformed; delete it to rerun that run"
        )
    return record


def is_stale(workdir: str, key: str, fingerprint: str) -> bool:
    """Whether run `key` has a record file of another fingerprint (another config or
    code version): `read` ignores it and the run trains again."""
    try:
        record = _load(path(workdir, key))
    except stage.PipelineError:
        return False  # `read` names it when the run's turn comes
    return record is not None and record.get("fingerprint") != fingerprint


def write(workdir: str, key: str, record: dict) -> None:
    """Writes a record atomically (a reader never sees half of one)."""
    p = path(workdir, key)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = f"{p}.{os.getpid()}.tmp"  # two processes may write the same record
    with open(tmp, "w") as f:
        json.dump(record, f, sort_keys=True, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    stage.replace_durably(tmp, p)


def done_record(fingerprint: str, cell_dir: str, run_dir: str, run_name: str) -> dict:
    """The record of a run whose train stage completed in run_dir, in cell_dir (whose
    preprocess gives the test counts; the run's own estimate_tau link, its tau)."""
    train = os.path.join(run_dir, "train")
    history = stage.read_json(os.path.join(train, run_name, "history.json"))
    meta = stage.read_json(os.path.join(train, stage.METADATA))
    manifest = stage.read_json(os.path.join(cell_dir, "preprocess", "manifest.json"))
    tau_path = os.path.join(run_dir, "estimate_tau", "tau.json")
    tau_report = stage.read_json(tau_path) if os.path.isfile(tau_path) else None
    tau = None if tau_report is None else tau_report["tau"]
    extra = {}
    if meta.get("code") is not None:  # the commit that trained it (pipeline.core.provenance)
        extra["code"] = meta["code"]
    if meta.get("earlier_attempts"):  # resumed: started/finished cover the last attempt
        extra["earlier_attempts"] = meta["earlier_attempts"]
    # What the run trained on when it dropped examples or used other labels.
    chosen = os.path.join(train, run_name, training_set.SUMMARY)
    if os.path.isfile(chosen):
        extra["training_set"] = stage.read_json(chosen)
    if tau_report is not None:  # tau's inputs, to compare with the true per-class noise
        extra["tau_inputs"] = {k: tau_report.get(k) for k in ("err", "n", "held_out")}
    validation = manifest.get("validation")
    if validation:
        extra["val_counts"] = validation["counts_noisy"]
    # The train split's realized noise, T[clean, noisy] counts (tau against true noise).
    counts = manifest["splits"].get("train", {}).get("transition_counts")
    if counts is not None:
        extra["train_transition_counts"] = counts
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "state": "done",
        "history": {k: v for k, v in history.items() if _kept(k)},
        "test_counts": manifest["splits"]["test"]["counts_after_cut"]["clean"],
        "tau": tau,
        "started": float(meta["started"]),
        "finished": float(meta["finished"]),
        **extra,
    }


def failed_record(fingerprint: str, error: str) -> dict:
    return {"format": FORMAT, "fingerprint": fingerprint, "state": "failed", "error": error}
