"""Infra validation (TFX's InfraValidator): the export, served, answers as trained.

Before the export stage marks itself complete it starts the project's own model
server, `python -m pipeline.serve`, in a separate process on the exported model base
path (port 0: the server binds a free local port and prints it), checks that the
version loaded (GET /v1/models/<name>/versions/<v> says AVAILABLE), sends real test
examples through the REST API ({"instances": [...]}, the raw stored input: uint8
images, or texts as {"b64": ...} so the bytes arrive unchanged) and compares the
answers with the Keras model's predictions. The server is always shut down (SIGINT,
then SIGKILL if it does not stop), also when a check fails. A server that cannot load
the model, or answers otherwise, is a PipelineError naming what failed; the export
stage then does not complete. On success the record is the export's
infra_blessing.json (TFX's InfraBlessing artifact).

Tolerance: the server's probabilities may differ from softmax(Keras logits) by at
most TOLERANCE = 1e-4 per entry, and its class_id must equal the Keras argmax
wherever the Keras top two probabilities are more than 2 * TOLERANCE apart. The
SavedModel's traced graph and Keras' predict run the same float32 arithmetic through
other kernels and batch shapes, so they agree to rounding (about 1e-6 here); JSON
carries float32 values exactly (Python writes the shortest repr of the float64 that
holds them). A real defect (other weights, normalization or preprocessing, a wrong
output) moves probabilities by far more than 1e-4.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from pipeline.core import stage
from pipeline.serving.signature import CLASS_ID, PROBABILITIES

FILE = "infra_blessing.json"
INFRA_BLESSED = "INFRA_BLESSED"
NUM_EXAMPLES = 32
TOLERANCE = 1e-4
STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
_SERVING_LINE = re.compile(
    r"Serving model .* versions \[(?P<versions>[\d, ]*)\] on http://[^:]+:(?P<port>\d+)/"
)


def _server_command(base_path: str, model_name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.serve",
        f"--model_base_path={base_path}",
        f"--model_name={model_name}",
        "--host=127.0.0.1",
        "--port=0",
        "--poll_seconds=3600",  # one model, loaded at start: no polling needed
        f"--parent_pid={os.getpid()}",  # gone with this process, even on SIGKILL
    ]


def _pump(stream, lines: queue.Queue | list) -> None:
    for line in stream:
        lines.put(line) if isinstance(lines, queue.Queue) else lines.append(line)


class ServerProcess:
    """`python -m pipeline.serve` on `base_path` in a subprocess, as a context manager:
    on entry it waits for the server to print its port; on exit it stops the server."""

    def __init__(self, base_path: str, model_name: str, *, timeout: float = STARTUP_TIMEOUT_S):
        self.command = _server_command(base_path, model_name)
        self.timeout = timeout
        self.stderr: list[str] = []
        self.port = self.versions = self.proc = None

    def __enter__(self) -> ServerProcess:
        # The same `pipeline` package as this process, wherever the cwd is.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        out: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=_pump, args=(self.proc.stdout, out), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for t in self._threads:
            t.start()
        try:
            self._wait_ready(out)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, out: queue.Queue) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                m = _SERVING_LINE.search(out.get(timeout=0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise stage.PipelineError(
                        f"infra validation: the model server exited with status "
                        f"{self.proc.returncode} before serving: {self.tail()}"
                    ) from None
                continue
            if m:
                self.port = int(m.group("port"))
                self.versions = [
                    int(v) for v in m.group("versions").replace(" ", "").split(",") if v
                ]
                return
        raise stage.PipelineError(
            f"infra validation: the model server did not start within {self.timeout:.0f} s: "
            f"{self.tail()}"
        )

    def tail(self, n: int = 5) -> str:
        """The server's last log lines (its load errors), on one line."""
        time.sleep(0.2)  # let the reader catch up with what the server wrote
        lines = [line.strip() for line in self.stderr if line.strip()]
        return " | ".join(lines[-n:]) or "(no output)"

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body))
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # serve.main shuts down cleanly on it
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


def instances(batch) -> list:
    """REST row instances of a raw batch: uint8 images [B, H, W, C] as nested lists, or
    texts (bytes) as TF Serving's {"b64": ...}."""
    if isinstance(batch, list):
        return [{"b64": base64.b64encode(t).decode("ascii")} for t in batch]
    return np.asarray(batch, np.uint8).tolist()


def compare(served: dict, expected_probs, *, tolerance: float = TOLERANCE) -> float:
    """Max |served - expected| of the probabilities; PipelineError if the answers
    differ beyond `tolerance` (module doc), naming the first differing example."""
    expected = np.asarray(expected_probs, np.float64)
    probs = np.asarray(served[PROBABILITIES], np.float64)
    if probs.shape != expected.shape:
        raise stage.PipelineError(
            f"infra validation: the server answered probabilities of shape {list(probs.shape)}, "
            f"the Keras model {list(expected.shape)}"
        )
    diff = np.abs(probs - expected).max(axis=-1)
    if diff.max() > tolerance:
        i = int(np.argmax(diff > tolerance))
        raise stage.PipelineError(
            f"infra validation: the served model answers example {i} with probabilities "
            f"{diff[i]:.3g} away from the Keras model's (tolerance {tolerance:g})"
        )
    top2 = np.sort(expected, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
    ids = np.asarray(served[CLASS_ID])
    wrong = np.flatnonzero(clear & (ids != expected.argmax(axis=-1)))
    if len(wrong):
        i = int(wrong[0])
        raise stage.PipelineError(
            f"infra validation: the served model gives class_id {ids[i]} for example {i}, "
            f"the Keras model {int(expected[i].argmax())}"
        )
    return float(diff.max())


def validate(base_path: str, model_name: str, version: int, batch, expected_probs) -> dict:
    """Serves `base_path` in a subprocess and checks version `version` on `batch` (raw
    inputs) against `expected_probs` [B, C]; returns the infra_blessing.json record."""
    with ServerProcess(base_path, model_name) as server:
        if version not in server.versions:
            raise stage.PipelineError(
                f"infra validation: the model server could not load version {version} of "
                f"{base_path}: {server.tail()}"
            )
        url = f"/v1/models/{model_name}/versions/{version}"
        status, body = server.request("GET", url)
        states = [v.get("state") for v in body.get("model_version_status", [])]
        if status != 200 or states != ["AVAILABLE"]:
            raise stage.PipelineError(f"infra validation: GET {url} gave {status} {body}")
        status, body = server.request("POST", url + ":predict", {"instances": instances(batch)})
    if status != 200 or "predictions" not in body:
        raise stage.PipelineError(f"infra validation: POST {url}:predict gave {status} {body}")
    rows = body["predictions"]
    missing = {k for r in rows for k in (PROBABILITIES, CLASS_ID) if k not in r}
    if missing or len(rows) != len(expected_probs):
        raise stage.PipelineError(
            f"infra validation: the server answered {len(rows)} predictions for "
            f"{len(expected_probs)} examples" + (f", without {sorted(missing)}" if missing else "")
        )
    served = {k: [r[k] for r in rows] for k in (PROBABILITIES, CLASS_ID)}
    err = compare(served, expected_probs)
    return {
        "status": INFRA_BLESSED,
        "server": " ".join(["python", *server.command[1:]]),
        "model_name": model_name,
        "version": int(version),
        "num_examples": len(rows),
        "max_abs_diff": err,
        "tolerance": TOLERANCE,
    }
