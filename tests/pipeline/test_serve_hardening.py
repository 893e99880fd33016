"""The serving path under hostile or careless clients: limits, timeouts, a token, shapes.

A tiny exported image model (tests/pipeline/test_serve.py's) on 127.0.0.1.
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline import export, serve
from pipeline.serving import http_server
from tests import harness
from tests.pipeline.test_serve import SHAPE, export_version, images

REPO = harness.REPO


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("export") / "tiny")
    os.makedirs(base)
    export_version(base, 1, seed=1)
    return base


def request(port, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


@pytest.fixture
def running(base):
    servers = []

    def start(**kwargs):
        srv = serve.Server(base, port=0, poll_seconds=60, **kwargs)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()


def test_binds_loopback_by_default(running):
    srv = running()
    assert srv.http._server.socket.getsockname()[0] == "127.0.0.1"
    assert request(srv.port, "GET", "/v1/models/tiny")[0] == 200


def test_deeply_nested_json_is_a_400_and_the_server_keeps_serving(running):
    srv = running()
    depth = 100_000
    body = "[" * depth + "]" * depth
    status, answer, _ = request(srv.port, "POST", "/v1/models/tiny:predict", body)
    assert status == 400
    assert answer["error"] == f"JSON nested {depth} levels deep; the limit is 64"
    ok = json.dumps({"instances": images(2).tolist()})
    assert request(srv.port, "POST", "/v1/models/tiny:predict", ok)[0] == 200


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"{}", 1),
        (b"7", 0),
        (b'{"a": [[1, 2], [3]], "b": {"c": []}}', 3),
        (b'["[[[[", "\\"]]{{", {"k": "}"}]', 2),  # brackets inside strings do not count
        (b'"\\\\"', 0),  # an escaped backslash ends before the closing quote
    ],
)
def test_json_depth_against_hand_counts(text, depth):
    assert http_server.json_depth(text) == depth
    json.loads(text)  # the cases are valid JSON


def test_a_stalled_client_is_disconnected_after_the_read_timeout(running):
    srv = running(read_timeout=1)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    try:
        sock.sendall(
            b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n["
        )
        start = time.monotonic()
        data = sock.recv(1024)  # blocks until the server closes the connection
        waited = time.monotonic() - start
    finally:
        sock.close()
    assert data == b""
    assert 0.5 < waited < 10  # read_timeout 1 s, checked every second


def test_connection_limit_holds_extra_clients_until_a_slot_frees(running):
    srv = running(max_connections=1, read_timeout=2)
    idle = socket.create_connection(("127.0.0.1", srv.port))  # holds the only slot
    try:
        time.sleep(0.3)
        start = time.monotonic()
        status, _, _ = request(srv.port, "GET", "/v1/models/tiny", timeout=20)
        waited = time.monotonic() - start
    finally:
        idle.close()
    assert status == 200
    assert waited > 1.0  # served only once the idle connection timed out


def _trickle(port: int, every: float, stop: threading.Event, closed: list) -> threading.Thread:
    """A slowloris client: opens a connection and sends one header line every `every`
    seconds, never ending its headers; appends the time the server closed it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n")

    def run():
        start = time.monotonic()
        try:
            while not stop.wait(every):
                sock.sendall(b"X-Slow: 1\r\n")
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    pass
        except OSError:  # the server closed it
            pass
        finally:
            closed.append(time.monotonic() - start)
            sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_clients_trickling_headers_are_closed_after_the_request_timeout(running):
    """Issue 29 item 5: with --max_connections=4 --read_timeout=3, four sockets sending
    a header line every second never go idle; they held every slot for as long as
    they trickled. Now each is closed request_timeout (2 s) after its first byte, and
    a client queued behind them is served within seconds, while they still trickle."""
    srv = running(max_connections=4, read_timeout=3, request_timeout=2)
    stop, closed = threading.Event(), []
    threads = [_trickle(srv.port, 1.0, stop, closed) for _ in range(4)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        status, _, _ = request(srv.port, "GET", "/v1/models/tiny", timeout=15)
        waited = time.monotonic() - start
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert status == 200
    assert waited < 8  # 2 s, checked every 2 s; the trickle would go on for 15 s
    assert len(closed) == 4 and max(closed) < 8, closed


def test_a_slow_body_is_closed_after_the_request_timeout(running):
    """The deadline covers the body too: a body sent a byte a second is cut off."""
    srv = running(read_timeout=3, request_timeout=2)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    start = time.monotonic()
    try:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"Content-Length: 100\r\n\r\n")
        data = None
        for _ in range(15):
            time.sleep(1)
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.01)
            try:
                data = sock.recv(1)
                if data == b"":
                    break
            except TimeoutError:
                pass
        waited = time.monotonic() - start
    finally:
        sock.close()
    assert waited < 8, waited


TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/v1/models/tiny", None),
        ("GET", "/v1/models/tiny/metadata", None),
        ("POST", "/v1/models/tiny:predict", json.dumps({"instances": images(1).tolist()})),
        ("GET", "/no/such/route", None),
    ],
)
def test_bearer_token_is_required_on_every_route(running, method, path, body):
    srv = running(auth_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, answer, got = request(srv.port, method, path, body, headers)
        assert status == 401, headers
        assert "bearer token" in answer["error"]
        assert got["www-authenticate"].startswith("Bearer")
    status, _, _ = request(srv.port, method, path, body, {"Authorization": f"Bearer {TOKEN}"})
    assert status == (404 if path == "/no/such/route" else 200)


@pytest.mark.parametrize("content, message", [("", "it is empty"), ("a b", "whitespace inside")])
def test_a_bad_token_file_is_a_usage_error(base, tmp_path, content, message):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.serve", f"--model_base_path={base}", "--port=0"]
        + [f"--auth_token_file={token_file}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert str(token_file) in out.stderr


def test_the_exported_signature_checks_rank_and_shape(base):
    fn = tf.saved_model.load(os.path.join(base, "1")).signatures["serving_default"]
    good = fn(image=tf.constant(images(2), tf.uint8))["class_id"]
    assert good.shape == (2,)
    h, w, c = SHAPE
    for bad in ([2, 32, 32, 3], [2, h, w], [h, w, c], [2, h, w, c + 1]):
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            fn(image=tf.zeros(bad, tf.uint8))
        message = str(e.value)
        assert f"is not compatible with expected shape [?,{h},{w},{c}]" in message
        assert f"image [{','.join(map(str, bad))}]" in message


def test_the_exported_text_signature_checks_rank(tmp_path):
    import keras

    from pipeline.data import text

    vectorizer = text.vectorizer(["the", "movie", "good"], sequence_length=4)
    inputs = keras.Input((4,), dtype="int64")
    logits = keras.layers.Dense(2)(keras.layers.Embedding(8, 3)(inputs)[:, 0])
    path = str(tmp_path / "m")
    export.export_saved_model(keras.Model(inputs, logits), path, vectorizer=vectorizer)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    assert fn(text=tf.constant(["the movie"]))["class_id"].shape == (1,)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"text \[1,1\] is not compatible with expected shape \[\?\]",
    ):
        fn(text=tf.constant([["the movie"]]))


def test_json_depth_is_linear_on_a_large_image_body():
    body = json.dumps({"instances": np.zeros((64, 28, 28, 1), np.uint8).tolist()}).encode()
    start = time.monotonic()
    assert http_server.json_depth(body) == 5
    assert time.monotonic() - start < 5


def _state(pid: int) -> str:
    """The process's state letter from /proc ("" once it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_server_given_parent_pid_stops_when_its_parent_is_killed(tmp_path):
    """A parent starts the server with --parent_pid and is then SIGKILLed (as an export
    stage might be during its infra validation): the server stops by itself."""
    parent_code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'pipeline.serve', "
        f"'--model_base_path={tmp_path}', '--port=0', f'--parent_pid={{os.getpid()}}'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    server = 0
    try:
        server = int(parent.stdout.readline())
        # Up and serving (its one line on the shared stdout), then the parent dies.
        line = parent.stdout.readline()
        assert line.startswith("Serving model"), line
        assert _state(server) not in ("", "Z")
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _state(server) not in ("", "Z") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _state(server) in ("", "Z"), "the server outlived its parent"
    finally:
        parent.kill()
        if server and _state(server) not in ("", "Z"):
            os.kill(server, 9)


# ----------------------------------------------------------------------------------
# Issue 29 item 8: versions are ASCII digits, values are checked apart from shapes,
# the Bearer scheme is case-insensitive, token-file errors are one line.


@pytest.mark.parametrize("version", ["%C2%B2", "%D9%A1", "%EF%BC%91", "01x", "-1"])
def test_a_version_that_is_not_ascii_digits_is_a_404(running, version):
    """ "²", Arabic-Indic "١" and full-width "１" pass str.isdigit(): "²" was a 500
    (int() refuses it), the other two were served as version 1."""
    srv = running()
    for suffix, method, body in (("", "GET", None), (":predict", "POST", GOOD_BODY)):
        status, answer, _ = request(
            srv.port, method, f"/v1/models/tiny/versions/{version}{suffix}", body
        )
        assert status == 404, answer
        assert "has no version" in answer["error"]


GOOD_BODY = json.dumps({"instances": images(1).tolist()})


def test_a_version_directory_named_with_other_digits_is_ignored(base, tmp_path):
    """A directory "²" holding a SavedModel stopped the server from starting."""
    other = str(tmp_path / "tiny")
    shutil.copytree(os.path.join(base, "1"), os.path.join(other, "1"))
    shutil.copytree(os.path.join(base, "1"), os.path.join(other, "²"))
    assert serve.find_versions(other) == {1: os.path.join(other, "1")}
    srv = serve.Server(other, port=0, poll_seconds=60)
    assert srv.store.versions() == [1]
    srv.http.shutdown()


@pytest.mark.parametrize(
    "value, shown",
    [(None, "null"), (10**30, str(10**30)), ("7", '"7"'), (0.5, "0.5"), (256, "256"), ([1], "")],
)
def test_a_pixel_that_is_no_integer_names_the_value_not_the_shape(running, value, shown):
    """The shapes match, so the error is the value's (it said "expected shape
    [-1, 6, 5, 1], got [1, 6, 5, 1]")."""
    srv = running()
    image = images(2).tolist()
    image[1][2][3][0] = value
    status, answer, _ = request(
        srv.port, "POST", "/v1/models/tiny:predict", json.dumps({"instances": image})
    )
    if isinstance(value, list):  # one level too deep: that one is a shape error
        assert status == 400 and "not a rectangular array" in answer["error"]
        return
    assert status == 400
    assert answer["error"] == (
        f"instances: 'image' must hold uint8 integers 0..255, got {shown} at [1, 2, 3, 0]"
    )


@pytest.mark.parametrize(
    "header, status",
    [
        (f"bearer {TOKEN}", 200),
        (f"BEARER {TOKEN}", 200),
        (f"Bearer  {TOKEN}", 200),
        (f"Basic {TOKEN}", 401),
        ("bearer wrong", 401),
        (f"bearer{TOKEN}", 401),
        (f"Bearer {TOKEN}x", 401),
    ],
)
def test_the_bearer_scheme_is_case_insensitive(running, header, status):
    """RFC 7235 section 2.1: the auth scheme is case-insensitive; the token is not."""
    srv = running(auth_token=TOKEN)
    assert request(srv.port, "GET", "/v1/models/tiny", headers={"Authorization": header})[0] == (
        status
    )


def test_a_token_file_error_is_one_line_naming_the_file(base, tmp_path):
    """An invalid-UTF-8 token file named no file, and every token-file error came
    after 80 lines of help."""
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff\xfesecret")
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.serve", f"--model_base_path={base}", "--port=0"]
        + [f"--auth_token_file={token_file}"],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: serve: --auth_token_file '{token_file}' is not UTF-8 text "
        "(byte 0: invalid start byte)"
    )
    assert "TF Serving's REST API" not in out.stderr  # no module help


# ----------------------------------------------------------------------------------
# Issue 29 item 6: instances per request and in inference at once are bounded.


@pytest.mark.parametrize("fmt", ["instances", "inputs", "named-inputs"])
def test_more_instances_than_max_batch_size_is_tf_servings_400(running, fmt):
    srv = running(max_batch_size=3, max_inflight_instances=3)
    for n, status in ((3, 200), (4, 400)):
        x = images(n).tolist()
        payload = {"instances": x} if fmt == "instances" else {"inputs": x}
        if fmt == "named-inputs":
            payload = {"inputs": {"image": x}}
        got, answer, _ = request(srv.port, "POST", "/v1/models/tiny:predict", json.dumps(payload))
        assert got == status, answer
    assert answer == {"error": "Task size 4 is larger than maximum input batch size 3"}


def test_concurrent_requests_never_hold_more_than_the_inflight_limit(running):
    """Six requests of 3 images at once, at most 4 instances in inference: each runs
    alone (3 + 3 > 4). Counted inside the signature call, which is slowed down so
    that the requests overlap."""
    srv = running(max_batch_size=3, max_inflight_instances=4, threads=6)
    servable = srv.store.get(None)
    real_predict, lock, now, peak = servable.predict, threading.Lock(), [0], [0]

    def predict(batch):
        with lock:
            now[0] += len(batch)
            peak[0] = max(peak[0], now[0])
        time.sleep(0.3)
        try:
            return real_predict(batch)
        finally:
            with lock:
                now[0] -= len(batch)

    servable.predict = predict
    body = json.dumps({"instances": images(3).tolist()})
    statuses = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(
                request(srv.port, "POST", "/v1/models/tiny:predict", body)[0]
            )
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 6
    assert peak[0] == 3  # one request at a time
    assert now[0] == 0


def test_an_inflight_limit_below_the_batch_size_is_refused(base):
    with pytest.raises(ValueError, match=r"max_inflight_instances \(2\) must be >= max_batch"):
        serve.Server(base, port=0, max_batch_size=3, max_inflight_instances=2)


def test_too_many_instances_are_refused_before_the_body_is_parsed(running, monkeypatch):
    """Parsing takes several times the body (a Python list per pixel): eight 3,000-image
    requests at once took the server over 2 GiB although each was then refused. Row
    and bare columnar instances are counted unparsed and refused first."""
    srv = running(max_batch_size=3, max_inflight_instances=3)

    def no_parse(body):
        raise AssertionError("parsed")

    monkeypatch.setattr(serve.App, "_parse", staticmethod(no_parse))
    for payload in ({"instances": images(4).tolist()}, {"inputs": images(4).tolist()}):
        status, answer, _ = request(
            srv.port, "POST", "/v1/models/tiny:predict", json.dumps(payload)
        )
        assert (status, answer) == (
            400,
            {"error": "Task size 4 is larger than maximum input batch size 3"},
        )


@pytest.mark.parametrize(
    "text, items",
    [
        (b'{"instances": [[[1]], [[2]], {"image": [[3]]}]}', 3),
        (b'{"inputs": {"image": [[[1]], [[2]]]}}', 1),  # counted after parsing
        (b'{"instances": ["[", "{", "a"]}', 0),
    ],
)
def test_json_nesting_counts_the_instances_unparsed(text, items):
    assert http_server.json_nesting(text)[1] == items
