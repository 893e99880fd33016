"""pipeline.serve over an exported TEXT model (input `text`: string [B]), on 127.0.0.1."""

import base64
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import export, serve
from pipeline.data import text
from tests.pipeline.test_serve import SHAPE, call, export_version

VOCABULARY = ["good", "bad", "movie"]
SEQUENCE_LENGTH = 4
NUM_CLASSES = 2
TEXTS = ["good movie", "bad"]
PREDICT = "/v1/models/reviews:predict"


def b64(text: str | bytes) -> dict:
    """TF Serving's JSON encoding of a binary string."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return {"b64": base64.b64encode(data).decode("ascii")}


def tiny_backbone() -> keras.Model:
    keras.utils.set_random_seed(3)
    ids = keras.Input((SEQUENCE_LENGTH,), dtype="int64")
    h = keras.layers.Embedding(len(VOCABULARY) + 2, 8)(ids)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(NUM_CLASSES)(h))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("export") / "reviews")
    backbone = tiny_backbone()
    vectorizer = text.vectorizer(VOCABULARY, sequence_length=SEQUENCE_LENGTH)
    export.export_saved_model(backbone, os.path.join(base, "1"), vectorizer=vectorizer)
    srv = serve.Server(base, host="127.0.0.1", port=0, poll_seconds=0.2)
    srv.start()
    yield {"server": srv, "backbone": backbone, "vectorizer": vectorizer}
    srv.shutdown()


def expected(server, texts) -> np.ndarray:
    logits = server["backbone"](server["vectorizer"](tf.constant(texts)), training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()


def test_metadata_reports_the_string_input(server):
    status, body = call(server["server"], "GET", "/v1/models/reviews/metadata")
    assert status == 200, body
    sig = body["metadata"]["signature_def"]["serving_default"]
    assert sig["inputs"] == {"text": {"dtype": "string", "shape": [-1]}}
    assert sig["outputs"]["class_id"] == {"dtype": "int64", "shape": [-1]}
    assert sig["outputs"]["probabilities"] == {"dtype": "float32", "shape": [-1, NUM_CLASSES]}


@pytest.mark.parametrize(
    "payload",
    [
        {"instances": TEXTS},
        {"instances": [{"text": t} for t in TEXTS]},
        {"inputs": TEXTS},
        {"inputs": {"text": TEXTS}},
        {"instances": [b64(t) for t in TEXTS]},
        {"instances": [{"text": b64(t)} for t in TEXTS]},
        {"instances": [b64(TEXTS[0]), TEXTS[1]]},
        {"inputs": [b64(t) for t in TEXTS]},
        {"inputs": {"text": [b64(t) for t in TEXTS]}},
    ],
    ids=[
        "rows-bare",
        "rows-named",
        "columnar-bare",
        "columnar-named",
        "rows-b64",
        "rows-named-b64",
        "rows-b64-and-string",
        "columnar-b64",
        "columnar-named-b64",
    ],
)
def test_predictions_equal_the_keras_backbone(server, payload):
    ref = expected(server, TEXTS)
    assert not np.allclose(ref[0], ref[1])  # the two texts are told apart
    status, body = call(server["server"], "POST", PREDICT, payload)
    assert status == 200, body
    if "instances" in payload:
        rows = body["predictions"]
        probabilities = [r["probabilities"] for r in rows]
        class_id = [r["class_id"] for r in rows]
    else:
        probabilities = body["outputs"]["probabilities"]
        class_id = body["outputs"]["class_id"]
    np.testing.assert_allclose(probabilities, ref, atol=1e-6)
    assert class_id == ref.argmax(axis=-1).tolist()


def test_long_unicode_and_empty_strings_are_served(server):
    texts = ["good " * 200_000 + "bad", "Ünïcödé 好 movie! <br />", ""]
    for inputs in (texts, [b64(t) for t in texts]):
        status, body = call(server["server"], "POST", PREDICT, {"inputs": inputs})
        assert status == 200, body
        np.testing.assert_allclose(
            body["outputs"]["probabilities"], expected(server, texts), atol=1e-6
        )


IMAGE = np.zeros((1, 6, 5, 1), int).tolist()


@pytest.mark.parametrize(
    "body,message",
    [
        ({"instances": []}, "non-empty"),
        ({"inputs": []}, "empty batch"),
        ({"inputs": {"text": []}}, "empty batch"),
        ({"instances": ["good", 3]}, "text 1 must be a string"),
        ({"instances": [None]}, "got null"),
        ({"instances": [["good"]]}, "got list"),
        ({"instances": [{"text": 1.5}]}, "got float"),
        ({"instances": [True]}, "got bool"),
        ({"inputs": "good movie"}, "must be a list of strings, got str"),
        ({"inputs": {"text": [None]}}, "got null"),
        ({"instances": [{"review": "good"}]}, "exactly the input 'text'"),
        ({"instances": [{"text": "good"}, "bad"]}, "mix"),
        ({"inputs": {"review": TEXTS}}, "expected the input 'text', got ['review']"),
        ({"inputs": {"text": TEXTS, "image": IMAGE}}, "expected the input 'text'"),
        ({"instances": IMAGE}, "got list"),
        ({"inputs": IMAGE}, "got list"),
        ({"inputs": {"image": IMAGE}}, "expected the input 'text', got ['image']"),
        ({"instances": [{"image": IMAGE[0]}]}, "exactly the input 'text'"),
        ('{"instances": ["\\ud800"]}', "not valid Unicode"),
        ({"instances": [{"b64": "not base64!"}]}, "text 0: 'b64' is not valid base64"),
        ({"instances": [{"b64": "Zm9"}]}, "'b64' is not valid base64"),  # missing padding
        ({"inputs": [b64("good"), b64(b"\xff\xfe")]}, "text 1: the 'b64' bytes are not UTF-8"),
        ({"instances": [{"b64": 12}]}, "'b64' must hold a base64 string, got int"),
        ({"instances": [{"b64": "Zm9v", "text": "x"}]}, "exactly the input 'text'"),
    ],
)
def test_bad_input_is_a_400_and_the_server_keeps_serving(server, body, message):
    status, reply = call(server["server"], "POST", PREDICT, body)
    assert status == 400, reply
    assert set(reply) == {"error"} and message in reply["error"], reply
    status, reply = call(server["server"], "POST", PREDICT, {"instances": TEXTS})
    assert status == 200, reply
    np.testing.assert_allclose(
        [r["probabilities"] for r in reply["predictions"]], expected(server, TEXTS), atol=1e-6
    )


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("export") / "tiny")
    os.makedirs(base)
    export_version(base, 1, seed=1)
    srv = serve.Server(base, host="127.0.0.1", port=0, poll_seconds=60)
    srv.start()
    yield srv
    srv.shutdown()


@pytest.mark.parametrize(
    "body,message",
    [
        ({"instances": TEXTS}, "expected shape [-1, 6, 5, 1], got [2]"),
        ({"inputs": {"text": TEXTS}}, "expected the input 'image', got ['text']"),
        ({"instances": [{"text": t} for t in TEXTS]}, "exactly the input 'image'"),
        ({"instances": [b64(t) for t in TEXTS]}, 'b64": ...} encodes a string'),
        ({"inputs": {"image": b64("x")}}, "'image' is uint8 [B, 6, 5, 1]"),
    ],
)
def test_text_sent_to_an_image_model_is_a_400(image_server, body, message):
    status, reply = call(image_server, "POST", "/v1/models/tiny:predict", body)
    assert status == 400, reply
    assert set(reply) == {"error"} and message in reply["error"], reply
    good = {"instances": np.zeros((1, *SHAPE), int).tolist()}
    assert call(image_server, "POST", "/v1/models/tiny:predict", good)[0] == 200
