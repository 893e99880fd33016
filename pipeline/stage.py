"""Stage directories: the contract every pipeline stage follows.

A stage named `s` writes only under `<workdir>/s.partial/` while it runs. When every
output is written it adds `metadata.json` and renames the directory to
`<workdir>/s/` (an atomic rename on one file system). So `<workdir>/s/` existing
means the stage completed; a stage that fails or is killed leaves at most a
`.partial` directory, which the next attempt clears.
"""

from __future__ import annotations

import contextlib
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

STAGES = ("preprocess", "pretrain", "estimate_tau", "train", "evaluate", "export")


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
def stage_output(workdir: str, name: str, *, config: Any = None) -> Iterator[str]:
    """Yields `<workdir>/<name>.partial`; on success renames it to `<workdir>/<name>`.

    Args:
      workdir: the pipeline's working directory (created if missing).
      name: the stage name.
      config: the stage's config section, recorded in metadata.json.

    Raises:
      PipelineError: if the stage already completed in this workdir.
    """
    final = stage_dir(workdir, name)
    partial = final + ".partial"
    if os.path.exists(final):
        raise PipelineError(f"stage '{name}' already completed in {workdir!r}")
    if os.path.exists(partial):
        logging.info("Clearing %s left by an earlier, unfinished attempt.", partial)
        shutil.rmtree(partial)
    os.makedirs(partial)
    started = time.time()
    yield partial
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    write_json(
        os.path.join(partial, METADATA),
        {
            "stage": name,
            "started": started,
            "finished": time.time(),
            "argv": list(sys.argv),
            "config": _jsonable(config),
        },
    )
    os.rename(partial, final)
    logging.info("Stage '%s' complete: %s", name, final)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_main(name: str, run_fn, config, workdir: str) -> None:
    """Shared body of every stage's `main`: skip if complete, report errors plainly."""
    if is_complete(workdir, name):
        logging.info("Stage '%s' already complete in %s; skipping.", name, workdir)
        return
    try:
        run_fn(config, workdir)
    except PipelineError as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        sys.exit(1)
