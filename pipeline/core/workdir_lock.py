"""One process at a time in a workdir: an OS file lock on `<workdir>/pipeline.lock`.

Two processes sharing a workdir would share `<stage>.partial`: the second takes the
first's live directory for one an interrupted attempt left, resumes from it or
clears it. `pipeline.run` and each stage run as a program therefore hold this lock
while they run, and a second one refuses at once, before touching anything.

The lock is `fcntl.flock` on an open file, so the kernel releases it when the
process dies however it dies (kill -9 included): a leftover lock file is never a
stale lock. The file's content (PID and start time, written once the lock is held)
only serves the message of the process that is refused. Its name is no stage's
name, so it is never taken for a stage output, and nothing in it enters a
fingerprint.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
from collections.abc import Iterator

from pipeline.core.stage import PipelineError

LOCK_FILE = "pipeline.lock"


class WorkdirInUse(PipelineError):
    """Another live process holds the workdir's lock."""


def _holder(fd: int) -> str:
    """'PID P (started T)' from the lock file's content, as its holder wrote it."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").split()
    if len(text) >= 2:
        return f"PID {text[0]} (started {text[1]})"
    return "another process (PID not yet recorded)"


def last_holder_pid(workdir: str) -> int | None:
    """The PID the workdir's lock file names: the process that last held the lock (it
    may have exited since: the file outlives it). None without a readable file. Reads
    only; never takes the lock."""
    try:
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock while the block runs (creating the workdir if missing).

    Raises:
      PipelineError: another live process holds it ("workdir W is in use by PID P
        (started T)"), or the workdir cannot hold a lock file (a file, read-only).
    """
    path = os.path.join(workdir, LOCK_FILE)
    try:
        os.makedirs(workdir, exist_ok=True)
        if not os.access(workdir, os.W_OK):
            raise PermissionError(13, "read-only", workdir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError as e:
        raise PipelineError(
            f"workdir {workdir!r} is not a directory ({e.strerror}); pass a directory as --workdir"
        ) from e
    except NotADirectoryError as e:
        raise PipelineError(
            f"workdir {workdir!r} is not a directory; pass a directory as --workdir"
        ) from e
    except OSError as e:  # permissions, a read-only file system (EROFS), ...
        raise PipelineError(
            f"workdir {workdir!r} is not writable ({e.strerror}); fix its permissions "
            "or pass another --workdir"
        ) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUse(
                f"workdir {workdir} is in use by {_holder(fd)}; wait for it to finish, "
                "or pass another --workdir"
            ) from None
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {started}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
