"""Stage directories: the contract every pipeline stage follows.

A stage named `s` writes only under `<workdir>/s.partial/` while it runs. When every
output is written it adds `metadata.json` and renames the directory to
`<workdir>/s/` (an atomic rename on one file system). So `<workdir>/s/` existing
means the stage completed; a stage that fails or is killed leaves at most a
`.partial` directory, which the next attempt clears (training stages instead resume
from the checkpoints they keep in it: `stage_output(..., resume=True)`).

Fingerprints: metadata.json records `fingerprint`, the sha256 of the config fields
the stage reads (`SECTIONS`), the fingerprints of its input stages (`inputs`) and
har_tf.__version__. A complete stage whose fingerprint differs from the one the
current config gives is *stale*: `pipeline.run` reruns it and every later stage; a
stage run as a program refuses it unless given --force. A stage whose metadata has
no fingerprint (made before fingerprints, or by hand) counts as stale. metadata.json
also records `code`, the git commit of the checkout the process ran from
(pipeline.core.provenance), which no fingerprint reads.

The stage graph: `REGISTRY` holds one `Stage` record per stage (the config fields its
fingerprint reads, its inputs, its declared outputs, when a config needs it, its extra
options) and is the only place the graph is written; STAGES, SECTIONS, DECLARED_OUTPUTS,
inputs() and needed_stages() are views of it. The records hold pure data because this
module is the bottom layer and imports nothing from the pipeline outside pipeline.core:
the function that makes stage `s` is `pipeline.<s>.run` (`Stage.module`), bound where
stages are run (pipeline.run.STAGE_RUNS), which imports the stage modules the records
name. `ensure` is the one "make this stage current" step that pipeline.run, the stage
programs (pipeline.cli) and the study share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from absl import logging

from pipeline.core import provenance

METADATA = "metadata.json"
# Inside `<stage>.partial`: the fingerprint it is being made for, so that a resumed
# attempt never continues from checkpoints made under another config.
PARTIAL_FINGERPRINT = "fingerprint.partial"
# Inside `<stage>.partial`: each attempt's start and code, so that a stage finished by
# a resumed attempt says so (its wall clock covers the last attempt only).
PARTIAL_ATTEMPTS = "attempts.partial.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: the only place the stage graph is written.

    Attributes:
      name: the stage's directory in a workdir, and its program: `python -m
        pipeline.<name>` (`module`), whose `run(config, workdir, **options)` makes it.
      sections: the config fields it reads itself ("a.b" = field b of section a);
        what its inputs read enters through their fingerprints. Fields that change
        only what is printed (`verbose`) are left out, so --quiet never makes a
        stage stale.
      inputs: the stages whose outputs it reads under every config.
      tau_inputs: the stages it also reads when the config `uses_tau`.
      outputs: files every complete stage has whatever the config (checked by
        why_incomplete, also in stages made before metadata.json recorded every
        file's size). The rest of its files (one directory per run, the
        SavedModel) are checked by their sizes.
      only_with_tau: needed only by a config that `uses_tau`.
      options: keyword arguments of its `run` beyond (config, workdir), given on
        the command line (flags of the same name).
      forcing_option: an option that, when set, reruns the stage even if current
        (a refused push is complete: --force_push pushes it anew).
    """

    name: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tau_inputs: tuple[str, ...] = ()
    only_with_tau: bool = False
    options: tuple[str, ...] = ()
    forcing_option: str = ""

    @property
    def module(self) -> str:
        """The stage's program, `python -m <module>`; its `run` makes the stage."""
        return f"pipeline.{self.name}"


# In the order they run; a stage reads only stages before it. Every file a stage
# reads from another stage's directory is covered by its inputs, so that a rerun
# input makes the reader stale: export reads evaluate's report.json (the metrics of
# its model card), evaluate reads tau.json for its report, push reads evaluate's
# blessing and export's infra blessing and version directory.
REGISTRY = (
    Stage(
        "preprocess",
        sections=("seed", "data"),
        inputs=(),
        outputs=("manifest.json",),
        options=("beam_args",),
    ),
    Stage(
        "pretrain",
        # build_har_model also reads train.aggregation and train.scale.
        # tau.cross_fit: whether it also fits ERM on half B.
        sections=(
            "seed",
            "model",
            "pretrain",
            "train.aggregation",
            "train.scale",
            "tau.cross_fit",
        ),  # fmt: skip
        inputs=("preprocess",),
        outputs=("model.keras",),
        only_with_tau=True,
    ),
    Stage(
        "estimate_tau",
        sections=("tau", "eval.batch_size"),
        inputs=("preprocess", "pretrain"),
        outputs=("tau.json",),
        only_with_tau=True,
    ),
    Stage(
        "train",
        # The train stage's per-epoch passes (pipeline.training.epoch_eval) read these eval fields.
        sections=(
            "seed",
            "model",
            "train",
            "eval.per_epoch_test",
            "eval.per_epoch_memorization",
            "eval.per_epoch_every",
            "eval.batch_size",
        ),
        inputs=("preprocess",),
        tau_inputs=("estimate_tau",),
        outputs=(),
    ),
    Stage(
        "evaluate",
        sections=("eval",),
        inputs=("preprocess", "train"),
        tau_inputs=("estimate_tau",),
        outputs=("report.json", "report.md"),
    ),
    Stage(
        "export",
        # Where the export is pushed does not change the export itself.
        sections=("export.run", "export.model_name", "export.version"),
        inputs=("preprocess", "train", "evaluate"),
        outputs=("infra_blessing.json",),
    ),
    Stage(
        "push",
        sections=("export.push_destination",),
        inputs=("evaluate", "export"),
        outputs=("push.json",),
        options=("force_push",),
        forcing_option="force_push",
    ),
)
BY_NAME = {s.name: s for s in REGISTRY}
# Views of the registry that the rest of the code (and tests) read.
STAGES = tuple(BY_NAME)
SECTIONS = {s.name: s.sections for s in REGISTRY}
DECLARED_OUTPUTS = {s.name: s.outputs for s in REGISTRY}
IGNORED_FIELDS = ("verbose",)
# Fields added after workdirs existed whose default reproduces the earlier outputs:
# they enter a fingerprint only when set otherwise, so those workdirs stay valid.
NEUTRAL_DEFAULTS = {
    "tau.cross_fit": False,
    "data.schema": "",
    "eval.per_epoch_every": 1,
    # every run of config.train.runs ("*": any run name; pipeline.training.training_set)
    "train.runs.*.drop": "none",
    "train.runs.*.labels": "noisy",
}


class PipelineError(Exception):
    """An error a user can act on; stage mains print it without a traceback."""


def stage_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def is_complete(workdir: str, name: str) -> bool:
    return os.path.isfile(os.path.join(stage_dir(workdir, name), METADATA))


def require(workdir: str, name: str) -> str:
    """Returns the directory of a completed stage whose outputs check out
    (why_incomplete), or raises PipelineError."""
    if not is_complete(workdir, name):
        raise PipelineError(
            f"stage '{name}' has not completed in {workdir!r}; run "
            f"`python -m pipeline.{name}` (or `python -m pipeline.run`) first"
        )
    why = why_incomplete(workdir, name)
    if why is not None:
        raise incomplete_error(workdir, name, why)
    return stage_dir(workdir, name)


def uses_tau(config) -> bool:
    """Whether some training run needs pretrain and estimate_tau: a HAR run (tau) or
    one that drops cleanlab's label issues (label_issues.csv)."""
    return any(
        r.regularizer == "har" or r.get("drop", "none") == "label_issues"
        for r in config.train.runs.values()
    )


def inputs(config, name: str) -> tuple[str, ...]:
    """The stages whose outputs stage `name` reads, under this config (REGISTRY)."""
    record = BY_NAME[name]
    return record.inputs + (record.tau_inputs if uses_tau(config) else ())


def needed_stages(config) -> list[str]:
    """The stages this config needs, in order: pretrain and estimate_tau only if a
    run uses tau (`uses_tau`)."""
    tau = uses_tau(config)
    return [s.name for s in REGISTRY if tau or not s.only_with_tau]


def upstream(name: str) -> tuple[str, ...]:
    """Every stage `name` reads under some config, directly or through its inputs,
    in the order they run."""
    found: set[str] = set()
    todo = [name]
    while todo:
        record = BY_NAME[todo.pop()]
        for dep in record.inputs + record.tau_inputs:
            if dep not in found:
                found.add(dep)
                todo.append(dep)
    return tuple(s for s in STAGES if s in found)


def _field(config, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = value[part]
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return value


def _drop_ignored(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_ignored(v) for k, v in obj.items() if k not in IGNORED_FIELDS}
    return obj


def _neutral_key(dotted: str) -> str:
    """A field's NEUTRAL_DEFAULTS key: a run's fields under "train.runs.*"."""
    parts = dotted.split(".")
    if parts[:2] == ["train", "runs"] and len(parts) == 4:
        parts[2] = "*"
    return ".".join(parts)


def _drop_neutral(dotted: str, value: Any) -> Any:
    """`value` of field `dotted` without the NEUTRAL_DEFAULTS at their default."""
    if isinstance(value, dict):
        return {
            k: _drop_neutral(f"{dotted}.{k}", v)
            for k, v in value.items()
            if NEUTRAL_DEFAULTS.get(_neutral_key(f"{dotted}.{k}"), object()) != v
        }
    return value


def config_section(config, name: str) -> dict:
    """The config fields stage `name` depends on, as a plain JSON-able dict."""
    return {
        f: _jsonable(_drop_neutral(f, _drop_ignored(_field(config, f))))
        for f in SECTIONS[name]
        if NEUTRAL_DEFAULTS.get(f, object()) != _field(config, f)
    }


def fingerprints(config) -> dict[str, str]:
    """The fingerprint of every stage under `config` (sha256 hex digests)."""
    import har_tf  # deferred: importing it imports TensorFlow

    out: dict[str, str] = {}
    for name in STAGES:
        payload = {
            "stage": name,
            "config": config_section(config, name),
            "inputs": {i: out[i] for i in inputs(config, name)},
            "har_tf": har_tf.__version__,
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        out[name] = hashlib.sha256(canonical.encode()).hexdigest()
    return out


def stored_fingerprint(workdir: str, name: str) -> str | None:
    """The fingerprint in a complete stage's metadata.json (None if absent)."""
    if not is_complete(workdir, name):
        return None
    return read_json(os.path.join(stage_dir(workdir, name), METADATA)).get("fingerprint")


def why_incomplete(workdir: str, name: str) -> str | None:
    """Why a stage with metadata.json cannot be trusted (None if it can), cheaply.

    Checks that metadata.json parses, that every file it records (`files`: relative
    path -> size in bytes) is there with that size, that every DECLARED_OUTPUTS
    file exists (what stages made before sizes were recorded are checked on), and
    that every recorded or declared .json file parses. Nothing heavier (no shard or
    weights is read): a stage's readers check their own inputs.
    """
    directory = stage_dir(workdir, name)
    try:
        with open(os.path.join(directory, METADATA)) as f:
            recorded = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError) as e:
        return f"{METADATA} is unreadable ({e})"
    for rel in (*DECLARED_OUTPUTS[name], *recorded):
        if not os.path.isfile(os.path.join(directory, rel)):
            return f"{rel} is missing"
    for rel, size in recorded.items():
        actual = os.path.getsize(os.path.join(directory, rel))
        if actual != size:
            return f"{rel} has {actual} bytes, {METADATA} records {size}"
    for rel in sorted({*DECLARED_OUTPUTS[name], *recorded}):
        if rel.endswith(".json"):
            try:
                with open(os.path.join(directory, rel)) as f:
                    json.load(f)
            except (OSError, ValueError) as e:
                return f"{rel} is not valid JSON ({e})"
    return None


def incomplete_error(workdir: str, name: str, why: str) -> PipelineError:
    return PipelineError(
        f"stage {name} is incomplete: {why}; rerun with --from_stage={name} (workdir {workdir})"
    )


def state(workdir: str, name: str, fingerprint: str) -> str:
    """ "missing" (not complete), "incomplete" (metadata.json there, but an output
    missing or unreadable: why_incomplete), "current" or "stale" (complete, made
    with another fingerprint)."""
    if not is_complete(workdir, name):
        return "missing"
    if why_incomplete(workdir, name) is not None:
        return "incomplete"
    return "current" if stored_fingerprint(workdir, name) == fingerprint else "stale"


def set_aside(workdir: str, name: str) -> str | None:
    """Renames a complete stage to `<name>.stale-<time>` (atomic); returns the new path.

    The stale copy is deleted by `discard_stale` once the new output is complete, or
    put back by `restore` if the rerun fails.
    """
    final = stage_dir(workdir, name)
    if not os.path.exists(final):
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = f"{final}.stale-{stamp}"
    os.rename(final, aside)
    logging.info("Moved stale stage '%s' aside to %s", name, aside)
    return aside


def clear_partial(workdir: str, name: str) -> None:
    """Deletes `<name>.partial`, so a forced rerun starts afresh instead of resuming."""
    shutil.rmtree(stage_dir(workdir, name) + ".partial", ignore_errors=True)


def restore(workdir: str, name: str, aside: str | None) -> None:
    """Puts a set-aside stage back if no new output replaced it."""
    if aside and os.path.exists(aside) and not os.path.exists(stage_dir(workdir, name)):
        os.rename(aside, stage_dir(workdir, name))


def run_replacing(workdir: str, name: str, run, *, fresh: bool) -> None:
    """Runs `run()` to make stage `name` anew, keeping the old output until it succeeds.

    A complete old output is set aside (`set_aside`) and put back if `run` fails
    (`restore`); `stage_output` deletes it once the new one is complete. `fresh`
    clears what an interrupted attempt left in `.partial` first, so nothing resumes.
    """
    if fresh:
        clear_partial(workdir, name)
    aside = set_aside(workdir, name)
    try:
        run()
    except BaseException:
        restore(workdir, name, aside)
        raise


def ensure(
    workdir: str,
    name: str,
    fingerprint: str,
    run,
    *,
    force: bool = False,
    fresh: bool = False,
    refuse_stale: bool = False,
    writer: bool = True,
    on_run=None,
) -> bool:
    """Makes stage `name` in `workdir` current; returns whether `run()` ran.

    A stage complete with `fingerprint` is skipped unless `force`. Any other (missing,
    incomplete, stale, or forced) is made by `run()` through `run_replacing`: the old
    output is set aside and put back if `run` fails. The callers' differences are
    arguments: pipeline.run forces every stage after one that ran, the stage
    programs refuse a stale output without --force (rerunning one stage alone would
    leave later stages inconsistent), the study does neither.

    Args:
      fresh: clear what an interrupted attempt left in `.partial` (nothing resumes).
      refuse_stale: raise PipelineError on a stale output (unless `force`).
      writer: False for a multi-worker stage's non-chief worker, which only runs
        (the chief sets aside, restores and writes).
      on_run: called with the state found (`state`) just before `run`, for the
        caller's messages.
    """
    found = state(workdir, name, fingerprint)
    if found == "current" and not force:
        logging.info("Stage '%s' already complete in %s; skipping.", name, workdir)
        return False
    if found == "stale" and refuse_stale and not force:
        raise PipelineError(
            f"stage '{name}' in {workdir!r} is complete but stale (made with "
            "another config or input); rerun it with --force (later stages then "
            "become stale too), or run `python -m pipeline.run`, which reruns it "
            "and every later stage"
        )
    if on_run is not None:
        on_run(found)
    if writer:
        run_replacing(workdir, name, run, fresh=fresh)
    else:
        run()
    return True


def discard_stale(workdir: str, name: str) -> None:
    """Deletes every `<name>.stale-*` directory (after `<name>` completed anew)."""
    for path in glob.glob(glob.escape(stage_dir(workdir, name)) + ".stale-*"):
        shutil.rmtree(path, ignore_errors=True)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _writer(path: str) -> str | None:
    """The stage whose directory (complete or `.partial`) holds `path`, if any."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    for part in reversed(parts[:-1]):
        base = part.removesuffix(".partial")
        if base in STAGES:
            return base
    return None


def read_json(path: str) -> Any:
    """A JSON file's content; PipelineError naming the file and the stage that writes
    it if it is missing or does not parse (truncated, edited by hand)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        writer = _writer(path)
        fix = f"; stage {writer} writes it: rerun with --from_stage={writer}" if writer else ""
        problem = "is missing" if isinstance(e, FileNotFoundError) else f"is unreadable ({e})"
        raise PipelineError(f"{path} {problem}{fix}") from e


def _strict(obj: Any) -> Any:
    """NaN/inf become null and numpy scalars/arrays plain Python, so the JSON is strict."""
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _strict(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def replace_durably(tmp: str, path: str) -> None:
    """Renames the finished file `tmp` to `path` so that a crash of the host, not only
    of the process, leaves either the old `path` or the whole new one.

    `os.replace` alone is atomic for readers, but the kernel may write the rename to
    disk before the file's data: after a power loss `path` can then exist and be
    empty. So the data is flushed (fsync of `tmp`, whoever wrote it: TensorFlow's
    writers included) before the rename, and the directory after it, so that the
    rename itself survives.
    """
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(os.path.dirname(os.path.abspath(path)))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str, text: str) -> None:
    """Writes a text file through a temporary file so a reader never sees half of it,
    and a host crash leaves the old file or the new one (`replace_durably`)."""
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        replace_durably(path + ".tmp", path)
    except BaseException:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise


def write_json(path: str, obj: Any) -> None:
    """Writes strict JSON through a temporary file so a reader never sees half a file."""
    write_text(path, json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def stage_output(
    workdir: str, name: str, config: Any = None, *, resume: bool = False, worker: Any = None
) -> Iterator[str]:
    """Yields `<workdir>/<name>.partial`; on success renames it to `<workdir>/<name>`.

    Args:
      workdir: the pipeline's working directory (created if missing).
      name: the stage name.
      config: the whole pipeline config the stage runs with. Its fingerprint for
        `name` (`fingerprints`) and the fields that fingerprint reads
        (`config_section`) are recorded in metadata.json, and mark `.partial` so
        that only an attempt with the same fingerprint resumes it. None (test
        fixtures that fake a stage's outputs) records neither.
      resume: keep what an earlier, unfinished attempt left in `.partial` (training
        stages resume from their checkpoints there); otherwise it is cleared.
      worker: a multi-worker stage's `pipeline.training.multi_worker.Worker` (None: one
        process). The chief does all of the above; every other worker writes
        nothing: it gets the chief's `.partial` once the chief has prepared it (to
        read what the chief resumes from) and returns once the chief has renamed it.

    Raises:
      PipelineError: if the stage already completed in this workdir.
    """
    final = stage_dir(workdir, name)
    partial = final + ".partial"
    if worker is not None and not worker.chief:
        worker.barrier()  # the chief has prepared .partial
        yield partial
        worker.barrier()  # the chief has renamed it
        return
    if os.path.exists(final):
        raise PipelineError(f"stage '{name}' already completed in {workdir!r}")
    fingerprint = None if config is None else fingerprints(config)[name]
    code = provenance.this_process()
    marker = os.path.join(partial, PARTIAL_FINGERPRINT)
    attempts_file = os.path.join(partial, PARTIAL_ATTEMPTS)
    same = False
    if os.path.exists(partial):
        same = os.path.isfile(marker) and _read_text(marker) == str(fingerprint)
        if resume and same:
            logging.info("Resuming from %s, left by an earlier, unfinished attempt.", partial)
        else:
            logging.info("Clearing %s left by an earlier, unfinished attempt.", partial)
            shutil.rmtree(partial)
            same = False
    os.makedirs(partial, exist_ok=True)
    if not same:  # a resumed attempt's marker already says it (never left half-written)
        write_text(marker, str(fingerprint))
    started = time.time()
    earlier = _earlier_attempts(attempts_file) if same else []
    write_json(attempts_file, [*earlier, {"started": started, "code": code}])
    if worker is not None:
        worker.barrier()
    yield partial
    # metadata.json goes in before the rename and the markers leave after it, so that a
    # kill at any point leaves either a resumable .partial or a complete stage.
    files = {
        k: v for k, v in _sizes(partial).items() if k not in (PARTIAL_FINGERPRINT, PARTIAL_ATTEMPTS)
    }
    write_json(
        os.path.join(partial, METADATA),
        {
            "stage": name,
            "files": files,
            "fingerprint": fingerprint,
            "started": started,
            "finished": time.time(),
            "earlier_attempts": earlier,
            "argv": list(sys.argv),
            "code": code,
            "config": None if config is None else config_section(config, name),
        },
    )
    os.rename(partial, final)
    for leftover in (PARTIAL_FINGERPRINT, PARTIAL_ATTEMPTS):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(final, leftover))
    logging.info("Stage '%s' complete: %s", name, final)
    discard_stale(workdir, name)
    if worker is not None:
        worker.barrier()


def _earlier_attempts(path: str) -> list[dict]:
    """The attempts recorded in a resumed `.partial` (none: it predates the record, or
    a kill cut it short: the stage then reports no earlier attempt it cannot prove)."""
    try:
        attempts = read_json(path)
    except PipelineError:
        return []
    return attempts if isinstance(attempts, list) else []


def _sizes(directory: str) -> dict[str, int]:
    """Relative path -> size in bytes of every file under `directory` (why_incomplete
    checks them before the stage is trusted)."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, directory)] = os.path.getsize(path)
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
