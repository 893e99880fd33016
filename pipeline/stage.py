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
no fingerprint (made before fingerprints, or by hand) counts as stale.
"""

from __future__ import annotations

import contextlib
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

METADATA = "metadata.json"
# Inside `<stage>.partial`: the fingerprint it is being made for, so that a resumed
# attempt never continues from checkpoints made under another config.
PARTIAL_FINGERPRINT = "fingerprint.partial"

STAGES = ("preprocess", "pretrain", "estimate_tau", "train", "evaluate", "export")

# Config fields each stage reads itself ("a.b" = field b of section a); what its
# inputs read enters through their fingerprints. Fields that change only what is
# printed (`verbose`) are left out, so --quiet never makes a stage stale.
SECTIONS = {
    "preprocess": ("seed", "data"),
    # build_har_model also reads train.aggregation and train.scale.
    "pretrain": ("seed", "model", "pretrain", "train.aggregation", "train.scale"),
    "estimate_tau": ("tau", "eval.batch_size"),
    # The train stage's per-epoch test pass (pipeline.epoch_eval) reads these two.
    "train": ("seed", "model", "train", "eval.per_epoch_test", "eval.batch_size"),
    "evaluate": ("eval",),
    "export": ("export",),
}
IGNORED_FIELDS = ("verbose",)


class PipelineError(Exception):
    """An error a user can act on; stage mains print it without a traceback."""


def stage_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def is_complete(workdir: str, name: str) -> bool:
    return os.path.isfile(os.path.join(stage_dir(workdir, name), METADATA))


def require(workdir: str, name: str) -> str:
    """Returns the directory of a completed stage or raises PipelineError."""
    if not is_complete(workdir, name):
        raise PipelineError(
            f"stage '{name}' has not completed in {workdir!r}; run "
            f"`python -m pipeline.{name}` (or `python -m pipeline.run`) first"
        )
    return stage_dir(workdir, name)


def uses_tau(config) -> bool:
    """Whether some training run uses HAR (and so needs pretrain and estimate_tau)."""
    return any(r.regularizer == "har" for r in config.train.runs.values())


def inputs(config, name: str) -> tuple[str, ...]:
    """The stages whose outputs stage `name` reads, under this config."""
    tau = ("estimate_tau",) if uses_tau(config) else ()
    return {
        "preprocess": (),
        "pretrain": ("preprocess",),
        "estimate_tau": ("preprocess", "pretrain"),
        "train": ("preprocess", *tau),
        "evaluate": ("preprocess", "train", *tau),
        "export": ("preprocess", "train"),
    }[name]


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


def config_section(config, name: str) -> dict:
    """The config fields stage `name` depends on, as a plain JSON-able dict."""
    return {f: _jsonable(_drop_ignored(_field(config, f))) for f in SECTIONS[name]}


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


def state(workdir: str, name: str, fingerprint: str) -> str:
    """ "missing" (not complete), "current" or "stale" (complete, other fingerprint)."""
    if not is_complete(workdir, name):
        return "missing"
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


def discard_stale(workdir: str, name: str) -> None:
    """Deletes every `<name>.stale-*` directory (after `<name>` completed anew)."""
    for path in glob.glob(glob.escape(stage_dir(workdir, name)) + ".stale-*"):
        shutil.rmtree(path, ignore_errors=True)


# Fingerprints of the stages being run in this process: set by `fingerprinting`
# (pipeline.run and run_main), recorded by stage_output into metadata.json.
_current: dict[str, str] = {}


@contextlib.contextmanager
def fingerprinting(config) -> Iterator[dict[str, str]]:
    """Makes stage_output record `config`'s fingerprints while the block runs."""
    fps = fingerprints(config)
    old = dict(_current)
    _current.clear()
    _current.update(fps)
    try:
        yield fps
    finally:
        _current.clear()
        _current.update(old)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


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


def write_json(path: str, obj: Any) -> None:
    """Writes strict JSON through a temporary file so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_strict(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def stage_output(
    workdir: str, name: str, *, config: Any = None, resume: bool = False
) -> Iterator[str]:
    """Yields `<workdir>/<name>.partial`; on success renames it to `<workdir>/<name>`.

    Args:
      workdir: the pipeline's working directory (created if missing).
      name: the stage name.
      config: the stage's config section, recorded in metadata.json.
      resume: keep what an earlier, unfinished attempt left in `.partial` (training
        stages resume from their checkpoints there); otherwise it is cleared.

    Raises:
      PipelineError: if the stage already completed in this workdir.
    """
    final = stage_dir(workdir, name)
    partial = final + ".partial"
    if multi_worker_role["read_only"]:
        multi_worker_role["sync"]()  # until the chief has prepared .partial
        yield partial
        return
    if os.path.exists(final):
        raise PipelineError(f"stage '{name}' already completed in {workdir!r}")
    fingerprint = _current.get(name)
    marker = os.path.join(partial, PARTIAL_FINGERPRINT)
    if os.path.exists(partial):
        same = os.path.isfile(marker) and _read_text(marker) == str(fingerprint)
        if resume and same:
            logging.info("Resuming from %s, left by an earlier, unfinished attempt.", partial)
        else:
            logging.info("Clearing %s left by an earlier, unfinished attempt.", partial)
            shutil.rmtree(partial)
    os.makedirs(partial, exist_ok=True)
    with open(marker, "w") as f:
        f.write(str(fingerprint))
    if multi_worker_role["sync"]:
        multi_worker_role["sync"]()
    started = time.time()
    yield partial
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    os.remove(marker)
    write_json(
        os.path.join(partial, METADATA),
        {
            "stage": name,
            "fingerprint": _current.get(name),
            "started": started,
            "finished": time.time(),
            "argv": list(sys.argv),
            "config": _jsonable(config),
        },
    )
    os.rename(partial, final)
    logging.info("Stage '%s' complete: %s", name, final)
    discard_stale(workdir, name)


# Set by pipeline.multi_worker.start_stage for a multi-worker stage: "sync", a
# collective every worker passes once the chief has prepared `.partial`, and
# "read_only", true on the workers other than the chief, which write nothing.
multi_worker_role: dict[str, Any] = {"sync": None, "read_only": False}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_main(name: str, run_fn, config, workdir: str, *, force: bool | None = None) -> None:
    """Shared body of every stage's `main`.

    A stage that is complete and current is skipped. One that is complete but stale
    (its config or an input changed) is refused with an error, since rerunning it
    alone would leave later stages inconsistent: use `python -m pipeline.run`, which
    reruns it and everything downstream, or pass --force to rerun just this stage.
    An input stage that is stale is refused too. Errors print without a traceback.
    """
    if force is None:
        force = flag_value("force", False)
    try:
        with fingerprinting(config) as fps:
            for dep in inputs(config, name):
                if state(workdir, dep, fps[dep]) == "stale":
                    raise PipelineError(
                        f"input stage '{dep}' in {workdir!r} is stale (made with another "
                        "config); rerun it first, or run `python -m pipeline.run`"
                    )
            current = state(workdir, name, fps[name])
            if current == "current" and not force:
                logging.info("Stage '%s' already complete in %s; skipping.", name, workdir)
                return
            if current == "stale" and not force:
                raise PipelineError(
                    f"stage '{name}' in {workdir!r} is complete but stale (made with "
                    "another config or input); rerun it with --force (later stages then "
                    "become stale too), or run `python -m pipeline.run`, which reruns it "
                    "and every later stage"
                )
            section = config.get(name) if hasattr(config, "get") else None
            if hasattr(section, "get") and section.get("strategy") == "multi_worker":
                from pipeline import multi_worker

                multi_worker.start_stage(multi_worker_role)
            if multi_worker_role["read_only"]:
                run_fn(config, workdir)
                return
            if force:
                clear_partial(workdir, name)
            aside = set_aside(workdir, name)
            try:
                run_fn(config, workdir)
            except BaseException:
                restore(workdir, name, aside)
                raise
    except PipelineError as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        sys.exit(1)


def flag_value(name: str, default: Any) -> Any:
    """The value of absl flag `name` if defined and parsed (stage mains), else default."""
    from absl import flags

    f = flags.FLAGS
    if name in f and f.is_parsed():
        return f[name].value
    return default
