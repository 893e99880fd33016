"""Stage 7: push (TFX's Pusher): the exported model into a TF Serving model base path,
only if it is blessed (evaluate) and infra-blessed (export).

  python -m pipeline.push --config=... --workdir=...   [--force_push]

What is pushed: the export stage's version directory, <workdir>/export/<model_name>/
<version>, i.e. the run config.export.run. Its blessing is
<workdir>/evaluate/<run>/blessing.json, its infra blessing
<workdir>/export/infra_blessing.json. Where: config.export.push_destination (a
relative path is under the workdir), as <push_destination>/<version>; "" = no push.

A model that is not both BLESSED and INFRA_BLESSED is refused: nothing is copied,
the reasons (each failed threshold) are printed and recorded, and the stage
completes, as TFX's Pusher records a model it did not push. --force_push pushes it
anyway and records the reasons it overrode. The blessing is not taken on the file's
word: its status is recomputed from the evaluate stage's report.json and the
config's thresholds, and a blessing.json that differs from the recomputed one
(edited by hand) is refused too (blessing.verify).

Atomic: the version is copied into <push_destination>/.push-<version>-<pid>.tmp (not a
number, so neither pipeline.serve nor TF Serving takes it for a version), then renamed
to <push_destination>/<version>: one rename on one file system, so a server watching
the destination sees either no new version or the whole of it. An existing version
directory is never overwritten: with the same files it counts as pushed already
(also when another workdir's push of the same version renamed it first), with other
content it is an error (raise config.export.version or remove it). A push killed
before its rename leaves its temporary copy; the next push into that destination
deletes every such copy whose process is gone.

Writes <workdir>/push/push.json: pushed (bool), forced, reasons, run, model_name,
version, destination, the blessing and infra blessing statuses.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil

from absl import logging

from pipeline import cli
from pipeline.core import stage
from pipeline.evaluation import blessing
from pipeline.serving import infra_validation

NAME = "push"
FILE = "push.json"
# A push's temporary copy inside the destination (module doc).
TMP = re.compile(r"\.push-(?P<version>[0-9]+)-(?P<pid>[0-9]+)\.tmp")


def destination(config, workdir: str) -> str:
    """config.export.push_destination as an absolute path ("" = no push)."""
    dest = config.export.push_destination
    return os.path.abspath(os.path.join(workdir, dest)) if dest else ""


def _tests(workdir: str) -> dict[str, dict]:
    """run name -> its test metrics, from the evaluate stage's report.json."""
    path = os.path.join(stage.stage_dir(workdir, "evaluate"), "report.json")
    runs = stage.read_json(path).get("runs")
    if not isinstance(runs, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("test"), dict) for r in runs.values()
    ):
        raise stage.PipelineError(
            f"{path} has no test metrics per run; stage evaluate writes it: rerun with "
            "--from_stage=evaluate"
        )
    return {n: r["test"] for n, r in runs.items()}


def refusal_reasons(config, workdir: str, run: str) -> tuple[list[str], dict]:
    """Why run `run`'s export may not be pushed ([] = it may), and the statuses read.

    The blessing's status is the one recomputed from report.json's metrics and the
    config's thresholds (blessing.verify); a blessing.json that differs from it (edited
    by hand, or not an object at all) is itself a reason.
    """
    reasons, statuses = [], {}
    bless_path = blessing.path(stage.stage_dir(workdir, "evaluate"), run)
    if not os.path.isfile(bless_path):
        reasons.append(f"run {run!r} has no blessing ({bless_path} is missing)")
    else:
        try:
            b = blessing.verify(
                stage.read_json(bless_path), run, _tests(workdir), blessing.thresholds(config)
            )
        except (ValueError, KeyError, TypeError) as e:  # metrics the thresholds cannot read
            raise stage.PipelineError(
                f"cannot judge run {run!r} from the evaluate stage's report.json ({e}); "
                "rerun with --from_stage=evaluate"
            ) from e
        statuses["blessing"] = b["status"]
        if b["tampered"]:
            reasons.append(
                f"{bless_path} is not what the evaluate stage wrote: {b['tampered']}; "
                "rerun with --from_stage=evaluate"
            )
        if b["status"] != blessing.BLESSED:
            reasons.append(f"run {run!r} is {b['status']}")
            reasons += [f"failed {line}" for line in blessing.failures(b)]
    infra_path = os.path.join(stage.stage_dir(workdir, "export"), infra_validation.FILE)
    if not os.path.isfile(infra_path):
        reasons.append(f"the export has no infra blessing ({infra_path} is missing)")
    else:
        infra = stage.read_json(infra_path)
        statuses["infra_blessing"] = infra.get("status") if isinstance(infra, dict) else None
        if statuses["infra_blessing"] != infra_validation.INFRA_BLESSED:
            reasons.append(f"the export is {statuses['infra_blessing']}")
    return reasons, statuses


def same_tree(a: str, b: str) -> bool:
    """Whether directories a and b hold the same files with the same bytes."""

    def files(root):
        return sorted(
            os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
        )

    names = files(a)
    if names != files(b):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a PID reused since counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(base: str) -> list[str]:
    """Deletes the temporary copies (.push-<version>-<pid>.tmp) under `base` whose push
    process is gone (killed before its rename); a live one's copy, maybe another
    workdir's push into the same destination, is left alone. Returns those deleted."""
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        m = TMP.fullmatch(name)
        if m and not _alive(int(m.group("pid"))):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed.append(name)
            logging.info("Removed %s, left by a push that was killed", name)
    return removed


def copy_version(src: str, base: str, version: int) -> bool:
    """Copies version directory `src` to <base>/<version> atomically (module doc).

    Returns False if an identical copy was there already, also when another push
    (from another workdir) renamed the same version into place first. Raises
    PipelineError if a different one is, leaving it alone, or if `base` cannot be
    written (a file on the way, a read-only file system).
    """
    final = os.path.join(base, str(version))

    def already_there() -> bool:
        if same_tree(src, final):
            return True
        raise stage.PipelineError(
            f"{final} already exists with other content; the push never overwrites a "
            "version: raise config.export.version or remove that directory"
        )

    if os.path.exists(final):
        return not already_there()
    tmp = os.path.join(base, f".push-{version}-{os.getpid()}.tmp")
    try:
        os.makedirs(base, exist_ok=True)
        remove_leftovers(base)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        try:
            os.rename(tmp, final)  # fails, leaving `final` alone, if it appeared meanwhile
        except OSError:
            if os.path.exists(final):  # another push won the race
                return not already_there()
            raise
    except OSError as e:
        raise stage.PipelineError(f"cannot push to {final}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def run(config, workdir: str, *, force_push: bool = False) -> None:
    section = config.export
    stage.require(workdir, "evaluate")
    export_dir = stage.require(workdir, "export")
    src = os.path.join(export_dir, section.model_name, str(int(section.version)))
    reasons, statuses = refusal_reasons(config, workdir, section.run)
    dest = destination(config, workdir)
    record = {
        "run": section.run,
        "model_name": section.model_name,
        "version": int(section.version),
        "destination": dest,
        "forced": bool(force_push and reasons and dest),
        "reasons": reasons,
        **statuses,
    }
    copied = already = False
    if dest and (force_push or not reasons):
        copied = copy_version(src, dest, int(section.version))
        already = not copied
    record.update(pushed=copied or already, already_there=already)
    with stage.stage_output(workdir, NAME, config) as out:
        stage.write_json(os.path.join(out, FILE), record)
    print(summary(record))
    logging.info("Push: %s", record)


def summary(record: dict) -> str:
    """The push stage's outcome in a few lines (printed, and by pipeline.run)."""
    what = f"run {record['run']!r} ({record['model_name']} version {record['version']})"
    if not record["destination"]:
        head = f"== push: {what} not pushed: config.export.push_destination is empty"
    elif record["pushed"]:
        how = "forced despite" if record["forced"] else "blessed and infra-blessed"
        there = " (already there)" if record["already_there"] else ""
        head = f"== push: {what} pushed to {record['destination']}{there}; {how}"
    else:
        head = f"== push: {what} REFUSED (--force_push overrides):"
    return "\n".join([head, *(f"   {r}" for r in record["reasons"])])


def read(workdir: str) -> dict | None:
    """The push stage's record, if it completed."""
    if not stage.is_complete(workdir, NAME):
        return None
    return stage.read_json(os.path.join(stage.stage_dir(workdir, NAME), FILE))


if __name__ == "__main__":
    cli.run_stage(NAME, run)
