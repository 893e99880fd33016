"""A TF Serving-compatible REST server for the export stage's SavedModels.

  python -m pipeline.serve --model_base_path=<workdir>/export/<name> --port=8501

Speaks TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

  GET  /v1/models/<name>[/versions/<v>]            model status
  GET  /v1/models/<name>[/versions/<v>]/metadata   the serving signature
  POST /v1/models/<name>[/versions/<v>]:predict    {"instances": [...]} (row format)
                                                   or {"inputs": ...} (columnar)

The kind of model is read from its signature's input (name and dtype):

- image models, input `image`: uint8 [B, H, W, C]. An instance is one image
  [H][W][C] of integers 0..255, bare or as {"image": ...}; "inputs" is the batch
  [B][H][W][C], bare or as {"image": ...}.
- text models, input `text`: string [B] (raw UTF-8; standardization and vocabulary
  are inside the SavedModel). An instance is one JSON string, bare or as
  {"text": "..."}; "inputs" is the list of strings, bare or as {"text": [...]}.
  As in TF Serving, any string may instead be sent as {"b64": "<base64>"}; the
  decoded bytes must be UTF-8 text. Metadata reports the input as
  {"dtype": "string", "shape": [-1]}.

Row requests get {"predictions": [{"probabilities": [...], "class_id": k}, ...]},
columnar ones {"outputs": {"probabilities": [[...]], "class_id": [...]}}. Errors are
{"error": "..."} with a 4xx status (5xx only for a failure inside the server); the
server keeps serving after any of them.

Versions are the numeric subdirectories of model_base_path holding saved_model.pb.
Every version found is loaded; requests without a version go to the newest. The
base path is polled (--poll_seconds), so a new version directory is picked up (and a
removed one dropped) without a restart. Write a new version atomically (write it
elsewhere, then rename it into place), as the export stage's rename does.

The HTTP layer is waitress, a production WSGI server (pipeline/serving/http_server.py says
why): it binds 127.0.0.1 unless --host says otherwise (--host=0.0.0.0 exposes it on
every interface), closes connections idle for --read_timeout seconds and those whose
request is not wholly received --request_timeout seconds after it began, serves at most
--max_connections at once, refuses JSON nested deeper than 64 levels (400) and more
than --max_batch_size instances in one request (400, TF Serving's "Task size N is
larger than maximum input batch size M"), runs at most --max_inflight_instances
instances at once (later requests wait), and, with
--auth_token_file, answers only requests with `Authorization: Bearer <token>` (401).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from pipeline.serving import http_server, request_body
from pipeline.serving.request_body import ServingError
from pipeline.serving.signature import IMAGE_INPUT, SIGNATURE, TEXT_INPUT

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Instances per request (TF Serving's max_batch_size), and in inference at once over
# all worker threads: what bounds the memory of inference whatever the clients send
# (docs/PERFORMANCE.md has the figures). A 16 MiB body holds about 4,200 28x28 images.
DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_INFLIGHT_INSTANCES = 2048
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<rest>.*)$")


class Servable:
    """One loaded version: the SavedModel's serving_default signature.

    `kind` is "image" (input `image`: uint8 [B, H, W, C]) or "text" (input `text`:
    string [B]), read from the signature's input.
    """

    def __init__(self, version: int, path: str):
        self.version = version
        self.path = path
        self._loaded = tf.saved_model.load(path)
        self.fn = self._loaded.signatures[SIGNATURE]
        inputs = self.fn.structured_input_signature[1]
        if set(inputs) == {IMAGE_INPUT}:
            spec = inputs[IMAGE_INPUT]
            if spec.dtype != tf.uint8 or spec.shape.rank != 4:
                raise ValueError(
                    f"{path}: input {IMAGE_INPUT!r} is {spec}, expected uint8 [B, H, W, C]"
                )
            self.kind, self.input_name, self.dtype = "image", IMAGE_INPUT, tf.uint8
            self.image_shape = tuple(int(d) for d in spec.shape[1:])
        elif set(inputs) == {TEXT_INPUT}:
            spec = inputs[TEXT_INPUT]
            if spec.dtype != tf.string or spec.shape.rank != 1:
                raise ValueError(f"{path}: input {TEXT_INPUT!r} is {spec}, expected string [B]")
            self.kind, self.input_name, self.dtype = "text", TEXT_INPUT, tf.string
            self.image_shape = None
        else:
            raise ValueError(
                f"{path}: {SIGNATURE} takes {sorted(inputs)}, expected exactly one of "
                f"{IMAGE_INPUT!r} (uint8 [B, H, W, C]) or {TEXT_INPUT!r} (string [B])"
            )
        self.outputs = {k: v for k, v in self.fn.structured_outputs.items()}

    def predict(self, batch) -> dict[str, np.ndarray]:
        """`batch`: uint8 images [B, H, W, C], or (text) a list of UTF-8 bytes."""
        out = self.fn(**{self.input_name: tf.constant(batch, self.dtype)})
        return {k: v.numpy() for k, v in out.items()}

    def metadata(self) -> dict:
        def spec(s):
            return {"dtype": s.dtype.name, "shape": [-1 if d is None else d for d in s.shape]}

        return {
            "signature_def": {
                SIGNATURE: {
                    "inputs": (
                        {TEXT_INPUT: {"dtype": "string", "shape": [-1]}}
                        if self.kind == "text"
                        else {IMAGE_INPUT: {"dtype": "uint8", "shape": [-1, *self.image_shape]}}
                    ),
                    "outputs": {k: spec(v) for k, v in sorted(self.outputs.items())},
                }
            }
        }


# A version is ASCII digits only: str.isdigit() also takes "²", "٣" and "３", which
# int() refuses or reads as another number.
VERSION = re.compile(r"[0-9]+")


def find_versions(base_path: str) -> dict[int, str]:
    """{version: path} of the numeric (ASCII digits) subdirectories holding a
    saved_model.pb; any other name is ignored, as TF Serving ignores it."""
    found = {}
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return found
    for name in names:
        path = os.path.join(base_path, name)
        if VERSION.fullmatch(name) and os.path.isfile(os.path.join(path, "saved_model.pb")):
            found[int(name)] = path
    return found


class ModelStore:
    """The loaded versions of one model, refreshed from its base path."""

    def __init__(self, name: str, base_path: str):
        self.name = name
        self.base_path = base_path
        self._lock = threading.Lock()
        self._servables: dict[int, Servable] = {}
        self._failed: dict[int, str] = {}

    def refresh(self) -> None:
        """Loads new versions and drops removed ones; a version that fails to load is
        retried on the next refresh (it may still be being written)."""
        on_disk = find_versions(self.base_path)
        with self._lock:
            current = dict(self._servables)
        for version, path in sorted(on_disk.items()):
            if version in current:
                continue
            try:
                servable = Servable(version, path)
            except Exception as e:  # noqa: BLE001 - any load failure is logged and retried
                if self._failed.get(version) != str(e):
                    logging.warning("Cannot load %s (retrying): %s", path, e)
                self._failed[version] = str(e)
                continue
            self._failed.pop(version, None)
            current[version] = servable
            logging.info("Loaded model %s version %d from %s", self.name, version, path)
        for version in [v for v in current if v not in on_disk]:
            logging.info("Unloading model %s version %d (removed)", self.name, version)
            del current[version]
        with self._lock:
            self._servables = current

    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._servables)

    def get(self, version: str | None) -> Servable:
        with self._lock:
            servables = dict(self._servables)
        if version is None:
            if not servables:
                raise ServingError(
                    503, f"model {self.name!r} has no servable version in {self.base_path}"
                )
            return servables[max(servables)]
        if not VERSION.fullmatch(version) or int(version) not in servables:
            raise ServingError(
                404,
                f"model {self.name!r} has no version {version!r}; available: {sorted(servables)}",
            )
        return servables[int(version)]


def _instances(value) -> int:
    """How many instances a request's "instances" or "inputs" value holds (what it
    takes of the InstanceBudget; a malformed one is refused inside it, as 1)."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return max(1, len(value)) if isinstance(value, list) else 1


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json")


class InstanceBudget:
    """At most `limit` instances in inference at once, over every worker thread.

    A request holds as many units as it has instances while its body is parsed (as
    counted unparsed, serving_http.json_nesting) and again while its batch is
    converted, run through the signature and answered, and waits until that many are free
    (not necessarily in arrival order). Activations grow with the instances in
    inference, so this bounds the server's peak memory, which unbounded concurrent
    large batches multiplied (issue 29).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()
        self.peak = 0  # the most units ever held at once (for tests and logs)

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        n = min(n, self.limit)  # a request never needs more than everything
        with self._cond:
            self._cond.wait_for(lambda: self._used + n <= self.limit)
            self._used += n
            self.peak = max(self.peak, self._used)
        try:
            yield
        finally:
            with self._cond:
                self._used -= n
                self._cond.notify_all()


class App:
    """The WSGI application: routes TF Serving's REST paths to a ModelStore."""

    def __init__(
        self,
        store: ModelStore,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_inflight_instances: int = DEFAULT_MAX_INFLIGHT_INSTANCES,
    ):
        for name, value in (
            ("max_batch_size", max_batch_size),
            ("max_inflight_instances", max_inflight_instances),
        ):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be an integer > 0, got {value!r}")
        if max_inflight_instances < max_batch_size:
            raise ValueError(
                f"max_inflight_instances ({max_inflight_instances}) must be >= max_batch_size "
                f"({max_batch_size}): a full request could never run"
            )
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.max_batch_size = max_batch_size
        self.budget = InstanceBudget(max_inflight_instances)

    def __call__(self, environ, start_response):
        request = Request(environ)
        request.max_content_length = self.max_body_bytes
        try:
            response = self.dispatch(request)
        except ServingError as e:
            response = _error(e.status, str(e))
        except HTTPException as e:
            response = _error(e.code or 400, e.description or e.name)
        except Exception as e:  # noqa: BLE001 - the server must keep serving
            logging.exception("Internal error on %s %s", request.method, request.path)
            response = _error(500, f"internal error: {type(e).__name__}: {e}")
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        m = _PATH.match(request.path)
        if not m:
            raise ServingError(404, f"no such path {request.path!r}; see /v1/models/<name>")
        name, version, rest = m.group("name"), m.group("version"), m.group("rest")
        if name != self.store.name:
            raise ServingError(
                404, f"unknown model {name!r}; this server serves {self.store.name!r}"
            )
        if rest == ":predict":
            if request.method != "POST":
                raise ServingError(405, ":predict takes POST")
            return self.predict(request, version)
        if rest in ("", "/metadata"):
            if request.method != "GET":
                raise ServingError(405, f"{request.path} takes GET")
            servable = self.store.get(version)
            if rest == "/metadata":
                return _json(
                    {
                        "model_spec": {"name": name, "version": str(servable.version)},
                        "metadata": servable.metadata(),
                    }
                )
            versions = [servable.version] if version is not None else self.store.versions()
            return _json(
                {
                    "model_version_status": [
                        {
                            "version": str(v),
                            "state": "AVAILABLE",
                            "status": {"error_code": "OK", "error_message": ""},
                        }
                        for v in sorted(versions, reverse=True)
                    ]
                }
            )
        raise ServingError(404, f"no such path {request.path!r}")

    def predict(self, request: Request, version: str | None) -> Response:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise ServingError(
                413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}"
            )
        body = request.get_data(cache=False)  # raises 413 past max_content_length
        depth, items = http_server.json_nesting(body)
        if depth > http_server.MAX_JSON_DEPTH:
            raise ServingError(
                400,
                f"JSON nested {depth} levels deep; the limit is {http_server.MAX_JSON_DEPTH}",
            )
        # Refused before parsing when the instances can be counted unparsed: parsing
        # takes several times the body's size.
        request_body.check_batch_size(items, self.max_batch_size)
        with self.budget.hold(max(1, items)):
            payload = self._parse(body)
        has_rows = "instances" in payload
        servable = self.store.get(version)
        value = payload["instances"] if has_rows else payload["inputs"]
        to_batch = request_body.row_batch if has_rows else request_body.columnar_batch
        with self.budget.hold(_instances(value)):
            out = servable.predict(to_batch(value, servable, max_batch_size=self.max_batch_size))
            if has_rows:
                keys = sorted(out)
                rows = [{k: out[k][i].tolist() for k in keys} for i in range(len(out[keys[0]]))]
                return _json({"predictions": rows})
            return _json({"outputs": {k: v.tolist() for k, v in out.items()}})

    @staticmethod
    def _parse(body: bytes) -> dict:
        """The request's JSON object, checked to hold one of "instances", "inputs"."""
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServingError(400, f"malformed JSON: {e}") from None
        if not isinstance(payload, dict):
            raise ServingError(400, "the request body must be a JSON object")
        signature = payload.get("signature_name", SIGNATURE)
        if signature != SIGNATURE:
            raise ServingError(400, f"unknown signature_name {signature!r}; known: {SIGNATURE}")
        has_rows, has_cols = "instances" in payload, "inputs" in payload
        if has_rows == has_cols:
            raise ServingError(400, "the request must hold exactly one of 'instances', 'inputs'")
        return payload


class Server:
    """The HTTP server, its model store and the thread that polls the base path."""

    def __init__(
        self,
        model_base_path: str,
        *,
        model_name: str = "",
        host: str = "127.0.0.1",
        port: int = 8501,
        poll_seconds: float = 1.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_inflight_instances: int = DEFAULT_MAX_INFLIGHT_INSTANCES,
        read_timeout: float = http_server.DEFAULT_READ_TIMEOUT_S,
        request_timeout: float = http_server.DEFAULT_REQUEST_TIMEOUT_S,
        max_connections: int = http_server.DEFAULT_CONNECTION_LIMIT,
        threads: int = http_server.DEFAULT_THREADS,
        auth_token: str | None = None,
    ):
        base = os.path.abspath(model_base_path)
        self.store = ModelStore(model_name or os.path.basename(base.rstrip("/")), base)
        self.store.refresh()
        self.http = http_server.HTTPServer(
            App(
                self.store,
                max_body_bytes=max_body_bytes,
                max_batch_size=max_batch_size,
                max_inflight_instances=max_inflight_instances,
            ),
            host=host,
            port=port,
            max_body_bytes=max_body_bytes,
            read_timeout=read_timeout,
            request_timeout=request_timeout,
            connection_limit=max_connections,
            threads=threads,
            auth_token=auth_token,
        )
        self.port = self.http.port
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="version-poll")

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.store.refresh()
            except Exception:  # noqa: BLE001 - keep polling
                logging.exception("Refreshing %s failed", self.store.base_path)

    def serve_forever(self) -> None:
        self._poller.start()
        self.http.serve_forever()

    def start(self) -> threading.Thread:
        """Serves on a background thread (for tests and benchmarks)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True, name="http")
        thread.start()
        return thread

    def shutdown(self) -> None:
        self._stop.set()
        self.http.shutdown()


def exit_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> threading.Thread:
    """Stops this server once process `parent_pid`, which started it, is gone.

    A server started for a check (infra validation, once per export) must not
    outlive a parent killed by SIGKILL, which cannot stop it. A daemon thread
    watches for this process to be re-parented and then sends itself SIGINT, the
    clean shutdown of `main`; a parent already gone when it starts counts too.
    """

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        logging.warning("Process %d, which started this server, is gone; stopping.", parent_pid)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _fail(message: str) -> None:
    """Ends main on a bad flag value: one line on stderr, exit status 1 (absl's
    UsageError would print the whole module help first, burying the line)."""
    print(f"error: serve: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    # SIGINT and SIGTERM end serve_forever through KeyboardInterrupt (a clean
    # shutdown), also when the server was started with SIGINT ignored (a
    # background job of a non-interactive shell), where Python sets no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if FLAGS.parent_pid:
        exit_with_parent(FLAGS.parent_pid)
    if not os.path.isdir(FLAGS.model_base_path):
        _fail(f"--model_base_path {FLAGS.model_base_path!r} is not a directory")
    token = None
    if FLAGS.auth_token_file:
        try:
            token = http_server.read_token_file(FLAGS.auth_token_file)
        except ValueError as e:
            _fail(str(e))
    try:
        server = Server(
            FLAGS.model_base_path,
            model_name=FLAGS.model_name,
            host=FLAGS.host,
            port=FLAGS.port,
            poll_seconds=FLAGS.poll_seconds,
            max_body_bytes=FLAGS.max_body_bytes,
            max_batch_size=FLAGS.max_batch_size,
            max_inflight_instances=FLAGS.max_inflight_instances,
            read_timeout=FLAGS.read_timeout,
            request_timeout=FLAGS.request_timeout,
            max_connections=FLAGS.max_connections,
            threads=FLAGS.threads,
            auth_token=token,
        )
    except ValueError as e:
        _fail(str(e))
    versions = server.store.versions()
    if not versions:
        logging.warning("No version under %s yet; polling for one.", FLAGS.model_base_path)
    print(
        f"Serving model {server.store.name!r} versions {versions} on "
        f"http://{FLAGS.host}:{server.port}/v1/models/{server.store.name}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def define_flags() -> None:
    """The server's command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("model_base_path", None, "Directory of numeric version directories.")
    flags.DEFINE_string("model_name", "", "Name in the URLs (default: the base path's name).")
    flags.DEFINE_string(
        "host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the server on every interface."
    )
    flags.DEFINE_integer("port", 8501, "Port to bind (0 = any free port).")
    flags.DEFINE_float("poll_seconds", 1.0, "How often to look for new versions.")
    flags.DEFINE_integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, "Largest request body.")
    flags.DEFINE_integer(
        "max_batch_size",
        DEFAULT_MAX_BATCH_SIZE,
        "Most instances in one request; more is a 400 (TF Serving's max_batch_size).",
    )
    flags.DEFINE_integer(
        "max_inflight_instances",
        DEFAULT_MAX_INFLIGHT_INSTANCES,
        "Most instances in inference at once over all threads (bounds its memory); "
        "requests past it wait. At least --max_batch_size.",
    )
    flags.DEFINE_float(
        "read_timeout",
        http_server.DEFAULT_READ_TIMEOUT_S,
        "Seconds a connection may stay idle (e.g. a stalled request) before it is closed.",
    )
    flags.DEFINE_float(
        "request_timeout",
        http_server.DEFAULT_REQUEST_TIMEOUT_S,
        "Seconds a client has to send a whole request (headers and body) from its first "
        "byte; a slower one is disconnected, however steadily it sends.",
    )
    flags.DEFINE_integer(
        "max_connections", http_server.DEFAULT_CONNECTION_LIMIT, "Connections served at once."
    )
    flags.DEFINE_integer("threads", http_server.DEFAULT_THREADS, "Request worker threads.")
    flags.DEFINE_string(
        "auth_token_file",
        None,
        "A file holding a bearer token; every request must then send "
        "`Authorization: Bearer <token>`.",
    )
    flags.DEFINE_integer(
        "parent_pid",
        0,
        "If set, the PID of the process that started the server: the server stops "
        "when that process is gone (for servers started by a program, e.g. infra "
        "validation).",
    )
    flags.mark_flag_as_required("model_base_path")


if __name__ == "__main__":
    from pipeline import cli

    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
