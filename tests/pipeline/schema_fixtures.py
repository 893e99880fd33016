"""Schemas written by hand for tests: a user's curated schema (config.data.schema).

Built field by field with `schema_pb2` (not through pipeline/data_validation/schema.py), so a
test of inference compares against an independent statement of the contract.

from tests.pipeline import schema_fixtures
path = schema_fixtures.write_schema(tmp_path / "schema.pbtxt", num_classes=10)
"""

from __future__ import annotations

import os

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2


def schema(
    *,
    num_classes: int,
    label_max: int | None = None,
    categorical: bool = True,
    modality: str = "image",
    image_shape: str = "28,28,1",
    image_dtype: str = "uint8",
    min_examples: int = 1,
    skew_threshold: float | None = 0.05,
) -> schema_pb2.Schema:
    """The records' schema (pipeline/data/records.py); label domains [0, label_max]."""
    label_max = num_classes - 1 if label_max is None else label_max
    out = schema_pb2.Schema()
    out.dataset_constraints.min_examples_count = min_examples
    payload = "image" if modality == "image" else "text"
    for name in ("id", payload, "label", "clean_label"):
        feature = out.feature.add(name=name)
        feature.type = schema_pb2.BYTES if name == payload else schema_pb2.INT
        feature.presence.min_fraction = 1.0
        if name in ("label", "clean_label"):
            feature.int_domain.min, feature.int_domain.max = 0, label_max
            feature.int_domain.is_categorical = categorical
        if name == "clean_label" and skew_threshold is not None:
            feature.skew_comparator.infinity_norm.threshold = skew_threshold
        if name == "image":
            feature.annotation.tag.extend(
                [f"image_shape:{image_shape}", f"image_dtype:{image_dtype}"]
            )
    return out


def write_schema(path, **kwargs) -> str:
    """Writes `schema(**kwargs)` in text format to `path`; returns the path."""
    path = os.fspath(path)
    with open(path, "w") as f:
        f.write(text_format.MessageToString(schema(**kwargs)))
    return path
