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

The HTTP layer is werkzeug's threaded WSGI server (one thread per connection).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server as _werkzeug_server
from werkzeug.wrappers import Request, Response

from pipeline.signature import IMAGE_INPUT, SIGNATURE, TEXT_INPUT

INPUT = IMAGE_INPUT  # the image models' input
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<rest>.*)$")


class ServingError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
        if set(inputs) == {INPUT}:
            spec = inputs[INPUT]
            if spec.dtype != tf.uint8 or spec.shape.rank != 4:
                raise ValueError(f"{path}: input {INPUT!r} is {spec}, expected uint8 [B, H, W, C]")
            self.kind, self.input_name, self.dtype = "image", INPUT, tf.uint8
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
                f"{INPUT!r} (uint8 [B, H, W, C]) or {TEXT_INPUT!r} (string [B])"
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
                        else {INPUT: {"dtype": "uint8", "shape": [-1, *self.image_shape]}}
                    ),
                    "outputs": {k: spec(v) for k, v in sorted(self.outputs.items())},
                }
            }
        }


def find_versions(base_path: str) -> dict[int, str]:
    """{version: path} of the numeric subdirectories holding a saved_model.pb."""
    found = {}
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return found
    for name in names:
        path = os.path.join(base_path, name)
        if name.isdigit() and os.path.isfile(os.path.join(path, "saved_model.pb")):
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
        if not version.isdigit() or int(version) not in servables:
            raise ServingError(
                404,
                f"model {self.name!r} has no version {version!r}; available: {sorted(servables)}",
            )
        return servables[int(version)]


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json")


def _columns(value, name: str, *, what: str):
    """A columnar value, bare or as {name: value}."""
    if isinstance(value, dict):
        if set(value) != {name}:
            raise ServingError(400, f"{what}: expected the input {name!r}, got {sorted(value)}")
        value = value[name]
    return value


def _is_b64(value) -> bool:
    """Whether a JSON value is TF Serving's encoding of a binary string, {"b64": ...}."""
    return isinstance(value, dict) and set(value) == {"b64"}


def _rows(instances: list, name: str, *, bare: str) -> list:
    """Row instances, all bare or all as {name: instance} (`bare`: what a bare one is).

    {"b64": ...} is a bare value (an encoded string), not an object of named inputs.
    """
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if all(named):
        if any(set(i) != {name} for i in instances):
            raise ServingError(400, f"every instance must hold exactly the input {name!r}")
        return [i[name] for i in instances]
    if any(named):
        raise ServingError(400, f"instances mix objects and bare {bare}")
    return instances


def _images(value, servable: Servable, *, what: str) -> np.ndarray:
    """A validated uint8 batch [B, H, W, C] from a JSON value (nested lists)."""
    value = _columns(value, INPUT, what=what)
    if _is_b64(value) or (isinstance(value, list) and any(_is_b64(v) for v in value)):
        raise ServingError(
            400,
            f'{what}: {{"b64": ...}} encodes a string; {INPUT!r} is uint8 '
            f"[B, {', '.join(map(str, servable.image_shape))}]: send integers 0..255",
        )
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise ServingError(400, f"{what}: not a rectangular array ({e})") from None
    expected = (-1, *servable.image_shape)
    if array.dtype == object or array.ndim != 4 or array.shape[1:] != servable.image_shape:
        raise ServingError(400, f"{what}: expected shape {list(expected)}, got {list(array.shape)}")
    if array.shape[0] == 0:
        raise ServingError(400, f"{what}: empty batch")
    if array.dtype.kind not in "iu":
        raise ServingError(
            400, f"{what}: {INPUT!r} must hold uint8 integers 0..255, got {array.dtype} values"
        )
    if array.min() < 0 or array.max() > 255:
        raise ServingError(
            400,
            f"{what}: {INPUT!r} values must be in 0..255 (uint8), "
            f"got [{array.min()}, {array.max()}]",
        )
    return array.astype(np.uint8)


def _texts(values, *, what: str) -> list[bytes]:
    """A validated text batch: the UTF-8 encoding of each string in `values`."""
    if not isinstance(values, list):
        raise ServingError(
            400,
            f"{what}: {TEXT_INPUT!r} must be a list of strings, got {type(values).__name__}",
        )
    if not values:
        raise ServingError(400, f"{what}: empty batch")
    batch = []
    for i, value in enumerate(values):
        if _is_b64(value):
            batch.append(_decoded_b64(value["b64"], what=f"{what}: text {i}"))
            continue
        if not isinstance(value, str):
            got = "null" if value is None else type(value).__name__
            raise ServingError(
                400, f"{what}: text {i} must be a string ({TEXT_INPUT!r} is string [B]), got {got}"
            )
        try:
            batch.append(value.encode("utf-8"))
        except UnicodeEncodeError as e:  # a lone surrogate escape, e.g. "\ud800"
            raise ServingError(400, f"{what}: text {i} is not valid Unicode ({e})") from None
    return batch


def _decoded_b64(encoded, *, what: str) -> bytes:
    """The bytes of a {"b64": encoded} text, which must be UTF-8 (what the model reads)."""
    if not isinstance(encoded, str):
        got = "null" if encoded is None else type(encoded).__name__
        raise ServingError(400, f"{what}: 'b64' must hold a base64 string, got {got}")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ServingError(400, f"{what}: 'b64' is not valid base64 ({e})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ServingError(400, f"{what}: the 'b64' bytes are not UTF-8 text ({e})") from None
    return data


def _row_batch(instances, servable: Servable):
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, "'instances' must be a non-empty list")
    if servable.kind == "text":
        return _texts(_rows(instances, TEXT_INPUT, bare="strings"), what="instances")
    return _images(_rows(instances, INPUT, bare="tensors"), servable, what="instances")


def _columnar_batch(inputs, servable: Servable):
    if servable.kind == "text":
        return _texts(_columns(inputs, TEXT_INPUT, what="inputs"), what="inputs")
    return _images(inputs, servable, what="inputs")


class App:
    """The WSGI application: routes TF Serving's REST paths to a ModelStore."""

    def __init__(self, store: ModelStore, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.store = store
        self.max_body_bytes = max_body_bytes

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
        servable = self.store.get(version)
        if has_rows:
            out = servable.predict(_row_batch(payload["instances"], servable))
            keys = sorted(out)
            rows = [{k: out[k][i].tolist() for k in keys} for i in range(len(out[keys[0]]))]
            return _json({"predictions": rows})
        out = servable.predict(_columnar_batch(payload["inputs"], servable))
        return _json({"outputs": {k: v.tolist() for k, v in out.items()}})


class Server:
    """The HTTP server, its model store and the thread that polls the base path."""

    def __init__(
        self,
        model_base_path: str,
        *,
        model_name: str = "",
        host: str = "0.0.0.0",
        port: int = 8501,
        poll_seconds: float = 1.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        base = os.path.abspath(model_base_path)
        self.store = ModelStore(model_name or os.path.basename(base.rstrip("/")), base)
        self.store.refresh()
        self.http = _werkzeug_server(
            host, port, App(self.store, max_body_bytes=max_body_bytes), threaded=True
        )
        self.port = self.http.server_port
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
        self.http.server_close()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not os.path.isdir(FLAGS.model_base_path):
        raise app.UsageError(f"--model_base_path {FLAGS.model_base_path!r} is not a directory")
    server = Server(
        FLAGS.model_base_path,
        model_name=FLAGS.model_name,
        host=FLAGS.host,
        port=FLAGS.port,
        poll_seconds=FLAGS.poll_seconds,
        max_body_bytes=FLAGS.max_body_bytes,
    )
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


if __name__ == "__main__":
    flags.DEFINE_string("model_base_path", None, "Directory of numeric version directories.")
    flags.DEFINE_string("model_name", "", "Name in the URLs (default: the base path's name).")
    flags.DEFINE_string("host", "0.0.0.0", "Address to bind.")
    flags.DEFINE_integer("port", 8501, "Port to bind (0 = any free port).")
    flags.DEFINE_float("poll_seconds", 1.0, "How often to look for new versions.")
    flags.DEFINE_integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, "Largest request body.")
    flags.mark_flag_as_required("model_base_path")
    app.run(main)
