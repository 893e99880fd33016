"""The production HTTP layer under `pipeline.serve`: waitress, its limits, a bearer token.

Why waitress: it is a production WSGI server from PyPI in pure Python (no compiled
parts, any platform), and it runs inside the serving process. The process loads its
SavedModels once and shares them across waitress's worker threads, as TF Serving
shares one model across requests; TensorFlow releases the GIL while a signature runs.
gunicorn forks worker processes instead, so each worker would hold its own copy of
every model, it does not run on Windows, and it cannot be started and stopped inside
a test or a benchmark process.

What it adds over werkzeug's development server, all configurable:
- `read_timeout`: a connection idle that long (a client that sent its headers and
  stalls, or keeps an idle keep-alive connection) is closed.
- `request_timeout`: a request not wholly received (headers and body) that long
  after its first byte is closed, however steadily its bytes trickle in. waitress
  bounds only idle time, so a client sending one header line every few seconds
  held its connection forever, and `connection_limit` of them locked everyone out
  (a slowloris attack); Apache's mod_reqtimeout and nginx's client_header_timeout
  bound the same. The bearer token is checked once the request is read, so an
  unauthenticated client can hold a connection for at most this long.
  waitress looks for both every `min(read_timeout, request_timeout, 5)` seconds.
- `connection_limit`: connections served at once; more wait in the listen backlog.
- `max_body_bytes`: the app answers a larger body with TF Serving's JSON 413; a body
  over twice the limit is refused by waitress itself (a plain-text 413) unread.
- `auth_token`: when set, every route needs `Authorization: Bearer <token>`;
  anything else is a 401 with a JSON error, before any routing.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time

import numpy as np
import waitress
import waitress.channel
from absl import logging

DEFAULT_READ_TIMEOUT_S = 30
# Time to send one whole request: a 16 MiB body at 1 MB/s fits.
DEFAULT_REQUEST_TIMEOUT_S = 20
DEFAULT_CONNECTION_LIMIT = 100
DEFAULT_THREADS = 8


def bearer_auth(app, token: str):
    """WSGI middleware: `app` only for requests carrying `Authorization: Bearer token`.

    The scheme is matched case-insensitively (RFC 7235 2.1: "bearer" and "BEARER" are
    Bearer too); the token is compared in constant time.
    """
    if not token:
        raise ValueError("the bearer token is empty")
    expected = token.encode()

    def guarded(environ, start_response):
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        scheme, _, credentials = given.strip().partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), expected)
        if ok:
            return app(environ, start_response)
        reason = "missing" if not given else "invalid"
        body = json.dumps({"error": f"{reason} bearer token (Authorization: Bearer ...)"})
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", 'Bearer realm="har-tf"'),
            ],
        )
        return [body.encode()]

    return guarded


def read_token_file(path: str) -> str:
    """The token in `path` (surrounding whitespace dropped); errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read --auth_token_file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--auth_token_file {path!r} is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(
            f"--auth_token_file {path!r} must hold one token with no spaces "
            f"({'it is empty' if not token else 'it has whitespace inside'})"
        )
    return token


class _TimedChannel(waitress.channel.HTTPChannel):
    """waitress's connection, remembering when the request it is reading began."""

    request_began: float | None = None

    def received(self, data):
        if data and self.request is None:  # the first bytes of a new request
            self.request_began = time.monotonic()
        try:
            return super().received(data)
        finally:
            if self.request is None:  # every request received whole
                self.request_began = None


def _close_slow_requests(server, request_timeout: float):
    """waitress's periodic `maintenance` (which closes idle connections), then the
    connections whose request has been arriving for longer than request_timeout."""
    idle_maintenance = server.maintenance

    def maintenance(now):
        idle_maintenance(now)
        cutoff = time.monotonic() - request_timeout
        for channel in list(server.active_channels.values()):
            began = getattr(channel, "request_began", None)
            if began is not None and began < cutoff and not channel.requests:
                logging.info("Closing a connection whose request took over %.0f s", request_timeout)
                channel.will_close = True

    return maintenance


class HTTPServer:
    """waitress serving one WSGI app, started and stopped from any thread."""

    def __init__(
        self,
        app,
        *,
        host: str,
        port: int,
        max_body_bytes: int,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        threads: int = DEFAULT_THREADS,
        auth_token: str | None = None,
    ):
        for name, value in (
            ("read_timeout", read_timeout),
            ("request_timeout", request_timeout),
            ("connection_limit", connection_limit),
            ("threads", threads),
            ("max_body_bytes", max_body_bytes),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if auth_token is not None:
            app = bearer_auth(app, auth_token)
        self._server = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            # waitress counts its listening socket and its wake-up trigger as connections.
            connection_limit=connection_limit + 2,
            channel_timeout=max(1, round(read_timeout)),
            cleanup_interval=max(1, min(round(read_timeout), round(request_timeout), 5)),
            # The app answers bodies past max_body_bytes with TF Serving's JSON 413; waitress
            # cuts off (plain-text 413) only bodies too large to be worth reading at all.
            max_request_body_size=2 * max_body_bytes,
            ident="har-tf",
            clear_untrusted_proxy_headers=True,
        )
        # Both are looked up on the instance when used: connections are accepted, and
        # maintenance runs, only once the loop runs.
        self._server.channel_class = _TimedChannel
        self._server.maintenance = _close_slow_requests(self._server, request_timeout)
        self.host = host
        self.port = self._server.effective_port
        self._started = False
        self._done = threading.Event()

    def serve_forever(self) -> None:
        """Serves until `shutdown()` (from another thread) or KeyboardInterrupt."""
        self._started = True
        try:
            self._server.run()
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops accepting, closes every connection and waits for the loop to end."""

        def close_everything():
            for dispatcher in list(self._server._map.values()):
                try:
                    dispatcher.close()
                except OSError:
                    pass

        # waitress's event loop is not thread-safe: the trigger runs the thunk inside
        # the loop's own thread, which then ends because its map is empty.
        # (`_map` is private; waitress offers no public way to stop a running loop.)
        if not self._started:
            close_everything()
            self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
            return
        try:
            self._server.trigger.pull_trigger(close_everything)
        except OSError:  # the loop has already closed the trigger
            pass
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
        if not self._done.wait(timeout):
            logging.warning("The HTTP loop did not stop within %.0f s", timeout)


MAX_JSON_DEPTH = 64
# A JSON string, escapes included (the unrolled form keeps the regex engine linear).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def json_nesting(body: bytes) -> tuple[int, int]:
    """(depth, items) of a JSON text, without parsing it: the deepest nesting of
    arrays and objects, and how many arrays and objects open at depth 3.

    Brackets inside strings do not count. Python's `json` recurses once per level and
    fails with RecursionError near 1,000; a request's images are 5 deep
    ({"instances": [[[[...]]]]}), so MAX_JSON_DEPTH leaves ample room. `items` is
    the number of instances of {"instances": [x, ...]} or {"inputs": [x, ...]} whose
    x are arrays or objects (images, {"text": ...}): known before the body is
    parsed, which takes far more memory than the body (each pixel a Python list).
    """
    scanned = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    # The brackets alone, in order: a few bytes each, where a cumulative sum over
    # the whole body took 8 bytes per byte (eight 13 MB bodies scanned at once, 1 GB).
    brackets = scanned[np.isin(scanned, np.frombuffer(b"[]{}", np.uint8))]
    opens = (brackets == ord("[")) | (brackets == ord("{"))
    depth = np.cumsum(opens.astype(np.int8) * 2 - 1, dtype=np.int32)
    return int(depth.max(initial=0)), int(np.count_nonzero(opens & (depth == 3)))


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (json_nesting)."""
    return json_nesting(body)[0]
