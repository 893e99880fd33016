"""The data schema: TFX's `Schema` proto, inferred from the statistics (SchemaGen).

`infer_schema` states what the records must keep being; pipeline/data_validation/anomalies.py
checks a split's statistics against it (ExampleValidator). Pure: protos in, protos
out; pipeline/data_validation/validate.py reads and writes the files. What it infers:

  - every record feature (pipeline/data/records.py) with its type, present in every
    record with one value (`presence`, `shape`);
  - label and clean_label: `int_domain` [0, C - 1] with `is_categorical`: a value
    outside the domain is a hard anomaly, and, the domain being categorical, so is a
    class with no record in a split (a curated schema may drop `is_categorical` to
    allow that: the missing class is then only reported);
  - clean_label: `skew_comparator.infinity_norm.threshold`, the largest L-infinity
    distance allowed between the test split's class distribution and the train
    split's before noise and cut (beyond it, a soft anomaly);
  - id: `int_domain.min` 0;
  - image: annotation tags `image_shape:H,W,C` and `image_dtype:uint8`. The Schema
    proto has no field for the decoded shape of raw bytes; TFDV keeps annotations as
    they are;
  - `dataset_constraints.min_examples_count` 1: an empty split is a hard anomaly.
"""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from pipeline.data_validation import statistics as data_statistics

# L-infinity distance between two class distributions (proportions) above which the
# test split is reported as skewed: a doubling of a 5% class, or a shift of 5 points.
DEFAULT_SKEW_THRESHOLD = 0.05
SHAPE_TAG, DTYPE_TAG = "image_shape", "image_dtype"

_SCHEMA_TYPES = {
    statistics_pb2.FeatureNameStatistics.INT: schema_pb2.INT,
    statistics_pb2.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
    statistics_pb2.FeatureNameStatistics.STRING: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.BYTES: schema_pb2.BYTES,
}


def schema_type(stats_type: int) -> int:
    """The Schema FeatureType of a FeatureNameStatistics.Type (STRING -> BYTES)."""
    return _SCHEMA_TYPES.get(stats_type, schema_pb2.TYPE_UNKNOWN)


def infer_schema(
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    *,
    num_classes: int,
    skew_threshold: float = DEFAULT_SKEW_THRESHOLD,
) -> schema_pb2.Schema:
    """The schema of the train split's statistics (the first dataset), C = num_classes."""
    train = statistics.datasets[0]
    schema = schema_pb2.Schema()
    schema.dataset_constraints.min_examples_count = 1
    for stats in train.features:
        name = data_statistics.feature_name(stats)
        feature = schema.feature.add(name=name, type=schema_type(stats.type))
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.dim.add(size=1)
        if name in data_statistics.CLASS_FEATURES:
            feature.int_domain.min, feature.int_domain.max = 0, num_classes - 1
            feature.int_domain.is_categorical = True
        elif name == "id":
            feature.int_domain.min = 0
        if name == "clean_label":
            feature.skew_comparator.infinity_norm.threshold = skew_threshold
        if name == "image":
            shapes = data_statistics.custom(stats, "image_shape") or ""
            dtypes = data_statistics.custom(stats, "image_dtype") or ""
            # Several shapes or dtypes is itself an anomaly: keep the first, flag the rest.
            feature.annotation.tag.append(f"{SHAPE_TAG}:{shapes.split(';')[0]}")
            feature.annotation.tag.append(f"{DTYPE_TAG}:{dtypes.split(';')[0]}")
            feature.annotation.comment.append("raw pixels, row-major H x W x C (records.py)")
    return schema


def tag_value(feature: schema_pb2.Feature, key: str) -> str | None:
    """The value of annotation tag `key:value` of a schema feature; None if absent."""
    for tag in feature.annotation.tag:
        name, sep, value = tag.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


def describe_domain(domain: schema_pb2.IntDomain) -> str:
    low = str(domain.min) if domain.HasField("min") else "-inf"
    high = str(domain.max) if domain.HasField("max") else "inf"
    return f"[{low}, {high}]"
