"""TF Serving's REST request bodies, as the serving signature's input batch.

Row format ({"instances": [...]}) and columnar format ({"inputs": ...}) for image
models (uint8 [B, H, W, C], integers 0..255) and text models (string [B], UTF-8, or
TF Serving's {"b64": ...}). Every malformed body is a ServingError (HTTP 400) whose
message names what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from pipeline.serving.signature import IMAGE_INPUT, TEXT_INPUT


class ServingError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def _images(value, servable, *, what: str) -> np.ndarray:
    """A validated uint8 batch [B, H, W, C] from a JSON value (nested lists)."""
    value = _columns(value, IMAGE_INPUT, what=what)
    if _is_b64(value) or (isinstance(value, list) and any(_is_b64(v) for v in value)):
        raise ServingError(
            400,
            f'{what}: {{"b64": ...}} encodes a string; {IMAGE_INPUT!r} is uint8 '
            f"[B, {', '.join(map(str, servable.image_shape))}]: send integers 0..255",
        )
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise ServingError(400, f"{what}: not a rectangular array ({e})") from None
    expected = (-1, *servable.image_shape)
    if array.ndim != 4 or array.shape[1:] != servable.image_shape:
        raise ServingError(400, f"{what}: expected shape {list(expected)}, got {list(array.shape)}")
    if array.shape[0] == 0:
        raise ServingError(400, f"{what}: empty batch")
    if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
        # The shape is right, a value is not: name the first one as the client sent it
        # (null, 0.5, "7", 256, or 10**30, past what numpy holds as an integer).
        values = np.asarray(value, dtype=object)
        where = next(i for i, v in np.ndenumerate(values) if _not_a_pixel(v))
        raise ServingError(
            400,
            f"{what}: {IMAGE_INPUT!r} must hold uint8 integers 0..255, got "
            f"{_shown(values[where])} at {list(where)}",
        )
    return array.astype(np.uint8)


def _not_a_pixel(v) -> bool:
    return isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255


def _shown(v) -> str:
    """A JSON value as the client wrote it, cut short."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


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


def check_batch_size(n: int, max_batch_size: int | None) -> None:
    """A 400 in TF Serving's words if a request holds more than max_batch_size
    instances (None: no limit). Checked before the instances become an array."""
    if max_batch_size is not None and n > max_batch_size:
        raise ServingError(
            400, f"Task size {n} is larger than maximum input batch size {max_batch_size}"
        )


def row_batch(instances, servable, *, max_batch_size: int | None = None):
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, "'instances' must be a non-empty list")
    check_batch_size(len(instances), max_batch_size)
    if servable.kind == "text":
        return _texts(_rows(instances, TEXT_INPUT, bare="strings"), what="instances")
    return _images(_rows(instances, IMAGE_INPUT, bare="tensors"), servable, what="instances")


def columnar_batch(inputs, servable, *, max_batch_size: int | None = None):
    name = TEXT_INPUT if servable.kind == "text" else IMAGE_INPUT
    values = _columns(inputs, name, what="inputs")
    if isinstance(values, list):
        check_batch_size(len(values), max_batch_size)
    if servable.kind == "text":
        return _texts(values, what="inputs")
    return _images(inputs, servable, what="inputs")
