"""Split statistics checked against a schema (ExampleValidator): TFX `Anomalies`.

`validate(statistics, schema)` returns every `Finding`; `anomalies_protos` turns them
into one `Anomalies` proto per split (`anomaly_info` keyed by feature name,
`dataset_anomaly_info` for the split as a whole, the schema as `baseline`), the file
`tfdv.load_anomalies_text` reads. Pure: pipeline/data_validation/validate.py does the I/O.

ERROR (hard: the preprocess stage stops and nothing is marked complete):
  DATASET_LOW_NUM_EXAMPLES  fewer records than dataset_constraints.min_examples_count
                            (at least 1: an empty split always is one)
  SCHEMA_MISSING_COLUMN     a schema feature the records lack (e.g. `image` vs `text`)
  SCHEMA_NEW_COLUMN         a record feature the schema lacks
  UNEXPECTED_DATA_TYPE      a feature whose type differs from the schema's
  INT_TYPE_SMALL_INT / INT_TYPE_BIG_INT   values below / above the `int_domain`
  CUSTOM_VALIDATION         a class of a categorical `int_domain` with no record in
                            the split; an image shape or dtype other than the
                            schema's annotation tags
WARNING (soft: recorded in the anomalies file and the manifest, and printed):
  COMPARATOR_L_INFTY_HIGH   the test split's class distribution differs from the train
                            split's before noise and cut by more than the feature's
                            `skew_comparator.infinity_norm.threshold`. Noise and cut
                            act after that point, so they cannot explain the gap.
  CUSTOM_VALIDATION         a class missing from a split, for a non-categorical domain
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from pipeline.data_validation import schema as data_schema
from pipeline.data_validation import statistics as data_statistics
from pipeline.data_validation.statistics import custom

INFO = anomalies_pb2.AnomalyInfo
ERROR, WARNING = INFO.ERROR, INFO.WARNING
SKEW_BASELINE, SKEW_TARGET = "train", "test"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One anomaly: `feature` "" is the split as a whole; `kind` an AnomalyInfo.Type."""

    split: str
    feature: str
    severity: int
    kind: int
    description: str
    # L-infinity measurement of a skew finding: (value, threshold).
    skew: tuple[float, float] | None = None

    @property
    def hard(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        where = f"{self.feature}: " if self.feature else ""
        return f"{self.split}: {where}{self.description}"


def _hard(split: str, feature: str, kind: int, description: str) -> Finding:
    return Finding(split, feature, ERROR, kind, description)


def validate(
    statistics: statistics_pb2.DatasetFeatureStatisticsList, schema: schema_pb2.Schema
) -> list[Finding]:
    """Every anomaly of every split of `statistics` against `schema`."""
    findings = []
    for dataset in statistics.datasets:
        findings += _check_split(dataset, schema)
    return findings + _check_skew(statistics, schema)


def _check_split(dataset, schema: schema_pb2.Schema) -> list[Finding]:
    split, n = dataset.name, dataset.num_examples
    minimum = max(1, schema.dataset_constraints.min_examples_count)
    if n < minimum:
        what = "the split is empty" if n == 0 else f"{n} records"
        constraint = f"the schema's dataset_constraints.min_examples_count ({minimum})"
        return [_hard(split, "", INFO.DATASET_LOW_NUM_EXAMPLES, f"{what}: fewer than {constraint}")]
    declared = {f.name: f for f in schema.feature}
    present = {data_statistics.feature_name(f): f for f in dataset.features}
    out = [
        _hard(split, name, INFO.SCHEMA_MISSING_COLUMN, "in the schema, not in the records")
        for name in declared.keys() - present.keys()
    ]
    out += [
        _hard(split, name, INFO.SCHEMA_NEW_COLUMN, "in the records, not in the schema")
        for name in present.keys() - declared.keys()
    ]
    for name in sorted(declared.keys() & present.keys()):
        out += _check_feature(split, declared[name], present[name])
    return sorted(out, key=lambda f: (f.feature, f.kind))


def _check_feature(split: str, feature: schema_pb2.Feature, stats) -> list[Finding]:
    name = feature.name
    got = data_schema.schema_type(stats.type)
    if got != feature.type:
        types = schema_pb2.FeatureType.Name(got), schema_pb2.FeatureType.Name(feature.type)
        message = "type {} in the records, {} in the schema".format(*types)
        return [_hard(split, name, INFO.UNEXPECTED_DATA_TYPE, message)]
    out = []
    if feature.HasField("int_domain"):
        out += _check_int_domain(split, feature, stats)
    for tag, stat in (
        (data_schema.SHAPE_TAG, "image_shape"),
        (data_schema.DTYPE_TAG, "image_dtype"),
    ):
        want, have = data_schema.tag_value(feature, tag), custom(stats, stat)
        if want is not None and have is not None and have != want:
            what = stat.removeprefix("image_")
            message = f"{what} {have} in the records, {want} in the schema (tag {tag}:{want})"
            out.append(_hard(split, name, INFO.CUSTOM_VALIDATION, message))
    return out


def _check_int_domain(split: str, feature: schema_pb2.Feature, stats) -> list[Finding]:
    """Values outside the domain, and classes of the domain with no record."""
    name, domain, num = feature.name, feature.int_domain, stats.num_stats
    where = f"the schema's int_domain {data_schema.describe_domain(domain)}"
    counts = data_statistics.class_counts(stats)
    out = []
    for below, bound in ((True, "min"), (False, "max")):
        if not domain.HasField(bound):
            continue
        limit, value = getattr(domain, bound), int(getattr(num, bound))
        if (value < limit) if below else (value > limit):
            outside = ""
            if counts is not None:
                values = np.arange(counts.size)
                k = counts[values < limit].sum() if below else counts[values > limit].sum()
                outside = f" ({int(k)} records outside)"
            kind = INFO.INT_TYPE_SMALL_INT if below else INFO.INT_TYPE_BIG_INT
            side = "below" if below else "above"
            out.append(_hard(split, name, kind, f"value {value} is {side} {where}{outside}"))
    if counts is not None and domain.HasField("min") and domain.HasField("max"):
        classes = range(max(0, domain.min), domain.max + 1)
        missing = [c for c in classes if c >= counts.size or counts[c] == 0]
        if missing:
            severity = ERROR if domain.is_categorical else WARNING
            listed = ", ".join(str(c) for c in missing)
            has = f"class {listed} has" if len(missing) == 1 else f"classes {listed} have"
            kind = "categorical" if domain.is_categorical else "not categorical"
            message = f"{has} no record in the {split} split ({where}, {kind})"
            out.append(Finding(split, name, severity, INFO.CUSTOM_VALIDATION, message))
    return out


def _check_skew(statistics, schema: schema_pb2.Schema) -> list[Finding]:
    """Test vs train (before noise and cut) class distributions, per skew comparator."""
    datasets = {d.name: d for d in statistics.datasets}
    base, target = datasets.get(SKEW_BASELINE), datasets.get(SKEW_TARGET)
    if base is None or target is None or not base.num_examples or not target.num_examples:
        return []
    out = []
    for feature in schema.feature:
        if not feature.skew_comparator.infinity_norm.HasField("threshold"):
            continue
        threshold = feature.skew_comparator.infinity_norm.threshold
        base_stats = data_statistics.feature(base, feature.name)
        target_stats = data_statistics.feature(target, feature.name)
        if base_stats is None or target_stats is None:
            continue  # Reported as a missing column.
        before = custom(base_stats, "counts_before_cut")
        p = data_statistics.histogram_counts(before) if before is not None else None
        q = data_statistics.class_counts(target_stats)
        if p is None or q is None or not p.sum() or not q.sum():
            continue
        size = max(p.size, q.size)
        p = np.pad(p, (0, size - p.size)) / p.sum()
        q = np.pad(q, (0, size - q.size)) / q.sum()
        c = int(np.argmax(np.abs(p - q)))
        distance = float(abs(p[c] - q[c]))
        if distance > threshold:
            out.append(
                Finding(
                    SKEW_TARGET,
                    feature.name,
                    WARNING,
                    INFO.COMPARATOR_L_INFTY_HIGH,
                    f"the class distribution differs from the {SKEW_BASELINE} split's before "
                    f"noise and cut by L-infinity {distance:.4f} > threshold {threshold:g} "
                    f"(class {c}: {q[c]:.4f} of {SKEW_TARGET}, {p[c]:.4f} of {SKEW_BASELINE})",
                    skew=(distance, threshold),
                )
            )
    return out


def anomalies_protos(
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    findings: list[Finding],
) -> dict[str, anomalies_pb2.Anomalies]:
    """One Anomalies proto per split of `statistics` (empty of anomalies if none)."""
    out = {}
    for dataset in statistics.datasets:
        anomalies = anomalies_pb2.Anomalies(data_missing=dataset.num_examples == 0)
        anomalies.baseline.CopyFrom(schema)
        for finding in (f for f in findings if f.split == dataset.name):
            if finding.feature:
                info = anomalies.anomaly_info[finding.feature]
                info.path.step[:] = [finding.feature]
            else:
                info = anomalies.dataset_anomaly_info
            info.severity = max(info.severity, finding.severity)
            info.reason.add(
                type=finding.kind,
                short_description=INFO.Type.Name(finding.kind),
                description=finding.description,
            )
            info.description = "; ".join(r.description for r in info.reason)
            info.short_description = (
                info.reason[0].short_description if len(info.reason) == 1 else "Multiple errors"
            )
            if finding.skew is not None:
                skew = anomalies.drift_skew_info.add()
                skew.path.step.append(finding.feature)
                skew.skew_measurements.add(
                    type=anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY,
                    value=finding.skew[0],
                    threshold=finding.skew[1],
                )
        out[dataset.name] = anomalies
    return out
