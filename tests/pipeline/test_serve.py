"""pipeline.serve: TF Serving's REST API over a tiny exported model, on 127.0.0.1."""

import http.client
import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import export, serve

SHAPE = (6, 5, 1)
NUM_CLASSES = 3
MAX_BODY = 64 * 1024


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))


def export_version(base: str, version: int, seed: int) -> str:
    """Exports atomically: written beside the base path, then renamed into it."""
    tmp = os.path.join(os.path.dirname(base), f".tmp-{version}")
    export.export_saved_model(tiny_model(seed), tmp, SHAPE)
    final = os.path.join(base, str(version))
    os.rename(tmp, final)
    return final


def reference(path: str, images: np.ndarray) -> dict:
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(image=tf.constant(images, tf.uint8)).items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("export") / "tiny")
    os.makedirs(base)
    v1 = export_version(base, 1, seed=1)
    srv = serve.Server(base, host="127.0.0.1", port=0, poll_seconds=0.2, max_body_bytes=MAX_BODY)
    srv.start()
    yield {"server": srv, "base": base, "v1": v1}
    srv.shutdown()


def call(srv, method: str, path: str, body=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def test_model_status(server):
    status, body = call(server["server"], "GET", "/v1/models/tiny")
    assert status == 200
    assert body["model_version_status"][0] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    status, body = call(server["server"], "GET", "/v1/models/tiny/metadata")
    assert status == 200
    sig = body["metadata"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image"] == {"dtype": "uint8", "shape": [-1, *SHAPE]}


def test_row_and_columnar_predictions_equal_the_saved_model(server):
    x = images(4)
    ref = reference(server["v1"], x)
    status, body = call(
        server["server"], "POST", "/v1/models/tiny:predict", {"instances": x.tolist()}
    )
    assert status == 200, body
    rows = body["predictions"]
    assert len(rows) == 4
    np.testing.assert_allclose([r["probabilities"] for r in rows], ref["probabilities"], rtol=1e-6)
    assert [r["class_id"] for r in rows] == ref["class_id"].tolist()

    named = {"instances": [{"image": i.tolist()} for i in x]}
    status, body2 = call(server["server"], "POST", "/v1/models/tiny/versions/1:predict", named)
    assert status == 200 and body2["predictions"] == rows

    status, body = call(
        server["server"], "POST", "/v1/models/tiny:predict", {"inputs": {"image": x.tolist()}}
    )
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"]["probabilities"], ref["probabilities"], rtol=1e-6)
    assert body["outputs"]["class_id"] == ref["class_id"].tolist()


GOOD = images(1).tolist()


@pytest.mark.parametrize(
    "method,path,body,status,message",
    [
        ("POST", "/v1/models/tiny:predict", b"{not json", 400, "malformed JSON"),
        ("POST", "/v1/models/tiny:predict", [1, 2], 400, "JSON object"),
        ("POST", "/v1/models/tiny:predict", {"x": 1}, 400, "exactly one of"),
        ("POST", "/v1/models/tiny:predict", {"instances": []}, 400, "non-empty"),
        (
            "POST",
            "/v1/models/tiny:predict",
            {"instances": np.zeros((1, 5, 6, 1), int).tolist()},
            400,
            "expected shape [-1, 6, 5, 1], got [1, 5, 6, 1]",
        ),
        ("POST", "/v1/models/tiny:predict", {"inputs": [[1, 2], [3]]}, 400, "rectangular"),
        (
            "POST",
            "/v1/models/tiny:predict",
            {"instances": np.full((1, *SHAPE), 0.5).tolist()},
            400,
            "uint8 integers",
        ),
        (
            "POST",
            "/v1/models/tiny:predict",
            {"instances": np.full((1, *SHAPE), 256).tolist()},
            400,
            "0..255",
        ),
        (
            "POST",
            "/v1/models/tiny:predict",
            {"inputs": np.full((1, *SHAPE), -1).tolist()},
            400,
            "0..255",
        ),
        ("POST", "/v1/models/tiny:predict", {"inputs": {"img": GOOD}}, 400, "'image'"),
        (
            "POST",
            "/v1/models/tiny:predict",
            {"instances": GOOD, "signature_name": "other"},
            400,
            "signature_name",
        ),
        ("POST", "/v1/models/nope:predict", {"instances": GOOD}, 404, "unknown model 'nope'"),
        ("POST", "/v1/models/tiny/versions/7:predict", {"instances": GOOD}, 404, "no version"),
        ("GET", "/v1/models/tiny/versions/x", None, 404, "no version"),
        ("GET", "/v1/models/tiny:predict", None, 405, "POST"),
        ("GET", "/v2/other", None, 404, "no such path"),
        (
            "POST",
            "/v1/models/tiny:predict",
            json.dumps({"instances": GOOD, "pad": "x" * MAX_BODY}),
            413,
            "exceeds the limit",
        ),
    ],
)
def test_errors_are_json_4xx_and_the_server_keeps_serving(
    server, method, path, body, status, message
):
    got, reply = call(server["server"], method, path, body)
    assert got == status, reply
    assert set(reply) == {"error"} and message in reply["error"]
    ok, _ = call(server["server"], "POST", "/v1/models/tiny:predict", {"instances": GOOD})
    assert ok == 200


def test_new_version_is_picked_up_without_restart(server):
    srv, base = server["server"], server["base"]
    x = images(2, seed=5)
    v2 = export_version(base, 2, seed=2)
    deadline = time.time() + 60
    while time.time() < deadline:
        _, body = call(srv, "GET", "/v1/models/tiny")
        if [s["version"] for s in body["model_version_status"]] == ["2", "1"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"version 2 not picked up: {body}")
    ref1, ref2 = reference(server["v1"], x), reference(v2, x)
    assert not np.allclose(ref1["probabilities"], ref2["probabilities"])
    _, body = call(srv, "POST", "/v1/models/tiny:predict", {"inputs": x.tolist()})
    np.testing.assert_allclose(body["outputs"]["probabilities"], ref2["probabilities"], rtol=1e-6)
    _, body = call(srv, "POST", "/v1/models/tiny/versions/1:predict", {"inputs": x.tolist()})
    np.testing.assert_allclose(body["outputs"]["probabilities"], ref1["probabilities"], rtol=1e-6)


def test_command_line_serves(server, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.serve",
            f"--model_base_path={server['base']}",
            "--host=127.0.0.1",
            "--port=0",
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1/models/tiny", line)
        assert m, line
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=30)
        conn.request("GET", "/v1/models/tiny")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["model_version_status"][0]["version"] in ("1", "2")
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_main_refuses_bad_arguments_when_called_as_a_function(tmp_path):
    """serve.main needs no name that only `python -m pipeline.serve` defines."""
    from absl import app

    with pytest.raises(app.UsageError, match="unexpected arguments"):
        serve.main(["serve", "extra"])
