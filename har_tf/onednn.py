"""Turns TensorFlow's oneDNN CPU kernels on for every har-tf entry point on x86.

TensorFlow 2.21 enables its oneDNN kernels by default only on some x86 processors
(newer Intel-class ones); elsewhere, AVX2-only AMD hosts among them, convolutions run
on Eigen, and a ResNet step is far slower (docs/PERFORMANCE.md). The switch is the
environment variable `TF_ENABLE_ONEDNN_OPTS`, which TensorFlow reads once, while its
shared library loads at `import tensorflow` (and so at `import keras`). Setting it any
later changes nothing. That is why this module imports nothing of TensorFlow and why
`har_tf/__init__.py`, `pipeline/__init__.py`, the benchmarks and the test suite call
`enable_onednn()` before TensorFlow is first imported.

The user's own setting always wins, `0` included: the variable is only set when it is
absent. Where TensorFlow was imported before us with the variable unset and oneDNN
came up off, it is too late; a single warning names the variable.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
_X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
_warned = False


def _tensorflow_onednn_enabled() -> bool:
    """Whether the TensorFlow already loaded in this process runs oneDNN kernels."""
    from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415

    return bool(_pywrap_util_port.IsMklEnabled())


def enable_onednn(
    *,
    environ=None,
    modules=None,
    machine: str | None = None,
    onednn_enabled=_tensorflow_onednn_enabled,
) -> str:
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` on x86 unless the user set it; says what it did.

    Args:
      environ: the environment to read and update (default `os.environ`).
      modules: the loaded modules (default `sys.modules`), to tell whether
        TensorFlow is already imported.
      machine: the processor architecture (default `platform.machine()`).
      onednn_enabled: () -> bool, asked only when TensorFlow is already loaded.

    Returns:
      One of "user" (the variable was set already: left alone), "not-x86" (left
      unset), "set" (set to 1 before TensorFlow loaded), "too-late" (TensorFlow was
      loaded first with oneDNN off: warned) or "already-on" (TensorFlow was loaded
      first and runs oneDNN anyway).
    """
    global _warned
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    machine = platform.machine() if machine is None else machine
    if VARIABLE in environ:
        return "user"
    if machine.lower() not in _X86_MACHINES:
        return "not-x86"
    if "tensorflow" in modules:
        if onednn_enabled():
            return "already-on"
        if not _warned:
            _warned = True
            warnings.warn(
                f"TensorFlow was imported before har_tf with {VARIABLE} unset, and its "
                f"oneDNN kernels are off: training runs markedly slower on this CPU. "
                f"Set {VARIABLE}=1 in the environment (or import har_tf before "
                f"TensorFlow) to turn them on; set it to 0 to silence this warning.",
                RuntimeWarning,
                stacklevel=2,
            )
        return "too-late"
    environ[VARIABLE] = "1"
    return "set"
