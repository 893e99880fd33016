"""Data validation: statistics, schema and anomalies (pipeline/data_*.py, in preprocess).

References are independent of the production code: class counts are np.bincount of
the fixture's labels, pixel figures numpy over the fixture's images, token counts a
plain-Python tokenizer over the texts read back from the records, quantiles
np.quantile; the files are parsed with `tensorflow_metadata`'s own proto classes, and
the user schemas are written field by field (tests/pipeline/schema_fixtures.py).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from har_tf import corruption
from pipeline import preprocess
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data_validation import anomalies as data_anomalies
from pipeline.data_validation import schema as data_schema
from pipeline.data_validation import statistics
from tests.pipeline import idx_fixtures, schema_fixtures, text_fixtures
from tests.pipeline.test_preprocess import read_split, smoke_config
from tests.pipeline.test_text import read_text_split, reference_tokens, text_config

INFO = anomalies_pb2.AnomalyInfo
NUM_TRAIN, NUM_TEST = 800, 200


def parse(path: str, message):
    with open(path) as f:
        return text_format.Parse(f.read(), message)


def by_name(dataset) -> dict:
    return {"".join(f.path.step): f for f in dataset.features}


def custom_stats(feature) -> dict:
    return {s.name: getattr(s, s.WhichOneof("val")) for s in feature.custom_stats}


def bucket_counts(histogram) -> list[int]:
    return [int(b.sample_count) for b in histogram.buckets]


def config_for(directory, **data):
    config = smoke_config(directory, limit_train=0, limit_test=0, chunk_size=300, **data)
    return config


def preprocess_dir(workdir) -> str:
    return stage.stage_dir(str(workdir), "preprocess")


# ----------------------------------------------------------------------------------
# Pure: summaries, statistics, schema inference, validation


def image_statistics(seed=0, n=(120, 40), num_classes=4):
    """Statistics of random images/labels (no Beam), with what they were built from."""
    rng = np.random.default_rng(seed)
    out = statistics_pb2.DatasetFeatureStatisticsList()
    made = {}
    for split, size in zip(("train", "test"), n, strict=True):
        images = rng.integers(0, 200, size=(size, 5, 4, 1), dtype=np.uint8)
        clean = np.arange(size) % num_classes
        noisy = np.where(np.arange(size) % 7 == 0, (clean + 1) % num_classes, clean)
        noisy = noisy if split == "train" else clean
        ids = np.arange(size) * 3
        counts = corruption.transition_counts(clean, noisy, num_classes)
        summary = statistics.summarize_images(ids, images)
        out.datasets.append(statistics.split_statistics(split, summary, counts, counts, "image"))
        made[split] = {"images": images, "clean": clean, "noisy": noisy, "ids": ids}
    return out, made


def test_summaries_merge_exactly_whatever_the_chunking():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(50, 3, 3, 2), dtype=np.uint8)
    ids = rng.permutation(1000)[:50]
    whole = statistics.summarize_images(ids, images)
    parts = [statistics.Summary()]
    for start, stop in ((0, 7), (7, 7), (7, 31), (31, 50)):
        parts.append(statistics.summarize_images(ids[start:stop], images[start:stop]))
    merged = parts[0]
    for part in reversed(parts[1:]):  # any order
        merged = statistics.merge(part, merged)
    for got in (merged, statistics.Summary.from_json(merged.to_json())):
        np.testing.assert_array_equal(got.pixel_counts, np.bincount(images.ravel(), minlength=256))
        assert (got.num_examples, got.id_min, got.id_max) == (50, ids.min(), ids.max())
        assert got.shapes == ("3,3,2",) and got.dtypes == ("uint8",)
        assert got.bytes_total == images.nbytes == whole.bytes_total


def test_image_statistics_equal_numpy():
    stats, made = image_statistics()
    for dataset in stats.datasets:
        ref = made[dataset.name]
        features = by_name(dataset)
        assert dataset.num_examples == len(ref["ids"])
        label = features["label"].num_stats
        assert bucket_counts(label.histograms[0]) == np.bincount(ref["noisy"]).tolist()
        assert (label.min, label.max) == (ref["noisy"].min(), ref["noisy"].max())
        assert label.mean == pytest.approx(ref["noisy"].mean())
        assert label.std_dev == pytest.approx(ref["noisy"].std())
        assert label.num_zeros == np.sum(ref["noisy"] == 0)
        clean = features["clean_label"].num_stats
        assert bucket_counts(clean.histograms[0]) == np.bincount(ref["clean"]).tolist()
        label_custom = custom_stats(features["label"])
        assert label_custom["num_noisy"] == np.sum(ref["noisy"] != ref["clean"])
        image = custom_stats(features["image"])
        pixels = ref["images"]
        assert (image["pixel_min"], image["pixel_max"]) == (pixels.min(), pixels.max())
        assert image["pixel_mean"] == pytest.approx(pixels.mean())
        assert image["pixel_std"] == pytest.approx(pixels.std())
        assert image["image_shape"] == "5,4,1" and image["image_dtype"] == "uint8"
        assert sum(bucket_counts(image["pixel_histogram"])) == pixels.size
        assert features["image"].bytes_stats.avg_num_bytes == 20
        assert features["id"].num_stats.max == ref["ids"].max()
    assert made["train"]["noisy"].tolist() != made["train"]["clean"].tolist()


def test_text_statistics_equal_a_plain_python_tokenizer():
    texts = ["Good film!", "", "a<br />b c, d e", "Élan café", "x " * 30, "one"]
    lengths = np.array([len(reference_tokens(t)) for t in texts])
    summary = statistics.summarize_texts(np.arange(6), texts, lengths)
    counts = np.diag([3, 3])
    dataset = statistics.split_statistics("train", summary, counts, counts, "text")
    text = by_name(dataset)["text"]
    assert text.type == statistics_pb2.FeatureNameStatistics.STRING
    assert text.string_stats.avg_length == pytest.approx(np.mean([len(t.encode()) for t in texts]))
    got = custom_stats(text)
    assert (got["token_count_min"], got["token_count_max"]) == (0, 30)
    assert got["token_count_mean"] == pytest.approx(lengths.mean())
    edges = [b.low_value for b in got["token_count_quantiles"].buckets]
    edges.append(got["token_count_quantiles"].buckets[-1].high_value)
    want = np.quantile(lengths, np.linspace(0, 1, 11), method="lower")
    np.testing.assert_array_equal(edges, want)


def test_inferred_schema_states_the_records_contract():
    stats, _ = image_statistics()
    schema = data_schema.infer_schema(stats, num_classes=4)
    features = {f.name: f for f in schema.feature}
    assert list(features) == ["id", "image", "label", "clean_label"]
    assert features["image"].type == schema_pb2.BYTES and features["id"].type == schema_pb2.INT
    for name in ("label", "clean_label"):
        domain = features[name].int_domain
        assert (domain.min, domain.max, domain.is_categorical) == (0, 3, True)
    assert features["clean_label"].skew_comparator.infinity_norm.threshold == 0.05
    assert data_schema.tag_value(features["image"], "image_shape") == "5,4,1"
    assert data_schema.tag_value(features["image"], "image_dtype") == "uint8"
    assert schema.dataset_constraints.min_examples_count == 1
    assert data_anomalies.validate(stats, schema) == []


def test_inferred_schema_is_the_hand_written_one():
    # infer_schema states, field for field, the contract schema_fixtures writes by
    # hand (names, types, presence, label domains, skew threshold, image tags), plus
    # what only inference adds; the hand-written one passes the same statistics.
    stats, _ = image_statistics()
    hand_written = schema_fixtures.schema(num_classes=4, image_shape="5,4,1")
    inferred = data_schema.infer_schema(stats, num_classes=4)
    for feature in inferred.feature:
        assert feature.presence.min_count == 1
        assert [d.size for d in feature.shape.dim] == [1]
        feature.presence.ClearField("min_count")
        feature.ClearField("shape")
        del feature.annotation.comment[:]
        if not feature.annotation.tag:
            feature.ClearField("annotation")
        if feature.name == "id":
            assert (feature.int_domain.min, feature.int_domain.max) == (0, 0)
            feature.ClearField("int_domain")
    assert inferred == hand_written, f"inferred:\n{inferred}\nhand-written:\n{hand_written}"
    assert data_anomalies.validate(stats, hand_written) == []


def _empty_test_split(stats):
    empty = statistics.split_statistics(
        "test", statistics.Summary(), np.zeros((4, 4)), np.zeros((4, 4)), "image"
    )
    stats.datasets[1].CopyFrom(empty)


def _drop_class_from_test(stats):
    label = by_name(stats.datasets[1])["label"]
    label.num_stats.histograms[0].buckets[2].sample_count = 0


def _skew_test_split(stats):
    clean = by_name(stats.datasets[1])["clean_label"]
    clean.num_stats.histograms[0].buckets[0].sample_count = 40  # 40 / 70 vs 30 / 120


@pytest.mark.parametrize(
    "mutate, schema_kwargs, split, feature, kind, severity, match",
    [
        (_empty_test_split, {}, "test", "", INFO.DATASET_LOW_NUM_EXAMPLES, INFO.ERROR,
         r"the split is empty: fewer than .*min_examples_count \(1\)"),
        (None, {"min_examples": 100}, "test", "", INFO.DATASET_LOW_NUM_EXAMPLES, INFO.ERROR,
         r"40 records: fewer than .*min_examples_count \(100\)"),
        (_drop_class_from_test, {}, "test", "label", INFO.CUSTOM_VALIDATION, INFO.ERROR,
         r"class 2 has no record in the test split \(.*\[0, 3\], categorical\)"),
        (_drop_class_from_test, {"categorical": False}, "test", "label", INFO.CUSTOM_VALIDATION,
         INFO.WARNING, r"class 2 has no record in the test split .*not categorical"),
        (None, {"label_max": 1}, "train", "label", INFO.INT_TYPE_BIG_INT, INFO.ERROR,
         r"value 3 is above the schema's int_domain \[0, 1\] \(59 records outside\)"),
        (None, {"image_shape": "28,28,1"}, "train", "image", INFO.CUSTOM_VALIDATION, INFO.ERROR,
         r"shape 5,4,1 in the records, 28,28,1 in the schema"),
        (None, {"image_dtype": "float32"}, "test", "image", INFO.CUSTOM_VALIDATION, INFO.ERROR,
         r"dtype uint8 in the records, float32 in the schema"),
        (None, {"modality": "text"}, "train", "text", INFO.SCHEMA_MISSING_COLUMN, INFO.ERROR,
         r"in the schema, not in the records"),
        (None, {"modality": "text"}, "test", "image", INFO.SCHEMA_NEW_COLUMN, INFO.ERROR,
         r"in the records, not in the schema"),
        (_skew_test_split, {}, "test", "clean_label", INFO.COMPARATOR_L_INFTY_HIGH, INFO.WARNING,
         r"L-infinity 0\.3214 > threshold 0\.05 \(class 0: 0\.5714 of test, 0\.2500 of train\)"),
    ],
)  # fmt: skip
def test_each_anomaly_kind(mutate, schema_kwargs, split, feature, kind, severity, match):
    stats, _ = image_statistics()
    if mutate is not None:
        mutate(stats)
    kwargs = {"num_classes": 4, "image_shape": "5,4,1", **schema_kwargs}
    schema = schema_fixtures.schema(**kwargs)
    findings = data_anomalies.validate(stats, schema)
    hits = [f for f in findings if (f.split, f.feature, f.kind) == (split, feature, kind)]
    assert len(hits) == 1, findings
    assert hits[0].severity == severity and hits[0].hard == (severity == INFO.ERROR)
    assert __import__("re").search(match, hits[0].description), hits[0].description
    # The Anomalies proto of the split holds it, with its severity.
    protos = data_anomalies.anomalies_protos(stats, schema, findings)
    info = protos[split].anomaly_info[feature] if feature else protos[split].dataset_anomaly_info
    assert info.severity == severity
    assert kind in [r.type for r in info.reason]
    assert protos[split].baseline == schema


def test_skew_is_measured_as_tfdv_records_it():
    stats, _ = image_statistics()
    _skew_test_split(stats)
    schema = schema_fixtures.schema(num_classes=4, image_shape="5,4,1")
    protos = data_anomalies.anomalies_protos(stats, schema, data_anomalies.validate(stats, schema))
    (skew,) = protos["test"].drift_skew_info
    assert list(skew.path.step) == ["clean_label"]
    # Train before noise and cut: 30 / 120 of class 0; test: 40 / (40 + 30) after the edit.
    assert skew.skew_measurements[0].value == pytest.approx(40 / 70 - 30 / 120)
    assert skew.skew_measurements[0].threshold == pytest.approx(0.05)
    assert not protos["train"].anomaly_info


# ----------------------------------------------------------------------------------
# The preprocess stage: files, schema in the workdir, hard and soft anomalies


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    return directory, idx_fixtures.write_dataset(directory, num_train=NUM_TRAIN, num_test=NUM_TEST)


@pytest.fixture(scope="module")
def image_run(dataset, tmp_path_factory):
    directory, data = dataset
    workdir = tmp_path_factory.mktemp("work")
    preprocess.run(config_for(directory), str(workdir))
    return data, workdir, preprocess_dir(workdir)


def test_statistics_read_back_equal_hand_counts(image_run):
    data, _, out = image_run
    stats = parse(
        os.path.join(out, "statistics.pbtxt"), statistics_pb2.DatasetFeatureStatisticsList()
    )
    assert [d.name for d in stats.datasets] == ["train", "test"]
    train, test = (by_name(d) for d in stats.datasets)
    # Before any corruption: the source's clean classes.
    before_clean = custom_stats(train["clean_label"])["counts_before_cut"]
    assert bucket_counts(before_clean) == np.bincount(data["train"].labels, minlength=10).tolist()
    # After noise and cut: the records' labels.
    records_train = read_split(out, "train", (28, 28, 1))
    assert stats.datasets[0].num_examples == len(records_train["id"]) < NUM_TRAIN
    after = bucket_counts(train["label"].num_stats.histograms[0])
    assert after == np.bincount(records_train["label"], minlength=10).tolist()
    assert custom_stats(train["label"])["num_noisy"] == np.sum(
        records_train["label"] != records_train["clean_label"]
    )
    # The test split: uncut, clean.
    want = np.bincount(data["test"].labels, minlength=10).tolist()
    assert bucket_counts(test["label"].num_stats.histograms[0]) == want
    assert bucket_counts(test["clean_label"].num_stats.histograms[0]) == want
    image = custom_stats(test["image"])
    assert image["pixel_min"] == data["test"].images.min()
    assert image["pixel_max"] == data["test"].images.max()
    assert image["pixel_mean"] == pytest.approx(data["test"].images.mean())
    kept_pixels = data["train"].images[records_train["id"]]
    assert custom_stats(train["image"])["pixel_mean"] == pytest.approx(kept_pixels.mean())
    assert image["image_shape"] == "28,28,1" and image["image_dtype"] == "uint8"


def test_clean_run_writes_schema_anomalies_and_manifest_summary(image_run):
    _, workdir, out = image_run
    schema = parse(os.path.join(workdir, "schema", "schema.pbtxt"), schema_pb2.Schema())
    assert parse(os.path.join(out, "schema.pbtxt"), schema_pb2.Schema()) == schema
    assert {f.name: f.int_domain.max for f in schema.feature if f.name.endswith("label")} == {
        "label": 9,
        "clean_label": 9,
    }
    for split in ("train", "test"):
        anomalies = parse(os.path.join(out, f"anomalies-{split}.pbtxt"), anomalies_pb2.Anomalies())
        assert not anomalies.anomaly_info and not anomalies.dataset_anomaly_info.reason
        assert anomalies.baseline == schema
    entry = stage.read_json(os.path.join(out, "manifest.json"))["data_validation"]
    assert entry["schema_origin"] == "inferred"
    assert entry["schema_source"] == os.path.join("schema", "schema.pbtxt")
    assert entry["soft_anomalies"] == {"train": [], "test": []}
    assert entry["splits"]["test"]["num_examples"] == NUM_TEST
    assert entry["splits"]["test"]["label_range"] == [0, 9]
    assert entry["splits"]["train"]["image_shape"] == "28,28,1"


def test_text_statistics_of_the_records(tmp_path):
    csv = text_fixtures.write_text_csv(tmp_path / "reviews.csv", n=300)
    preprocess.run(text_config(csv.path), str(tmp_path / "work"))
    out = preprocess_dir(tmp_path / "work")
    stats = parse(
        os.path.join(out, "statistics.pbtxt"), statistics_pb2.DatasetFeatureStatisticsList()
    )
    for dataset in stats.datasets:
        records = read_text_split(out, dataset.name)
        lengths = np.array([len(reference_tokens(t)) for t in records["text"]])
        text = by_name(dataset)["text"]
        got = custom_stats(text)
        assert (got["token_count_min"], got["token_count_max"]) == (lengths.min(), lengths.max())
        assert got["token_count_mean"] == pytest.approx(lengths.mean())
        sizes = [len(t.encode("utf-8")) for t in records["text"]]
        assert text.string_stats.avg_length == pytest.approx(np.mean(sizes))
        counts = bucket_counts(by_name(dataset)["label"].num_stats.histograms[0])
        assert counts == np.bincount(records["label"], minlength=2).tolist()
    schema = parse(os.path.join(tmp_path, "work", "schema", "schema.pbtxt"), schema_pb2.Schema())
    assert [f.name for f in schema.feature] == ["id", "text", "label", "clean_label"]


def _rerun(config, workdir):
    """A rerun of preprocess in `workdir` as pipeline.run does it (old output kept on failure)."""
    stage.run_replacing(
        str(workdir), "preprocess", lambda: preprocess.run(config, str(workdir)), fresh=True
    )


@pytest.mark.slow
def test_schema_is_kept_and_enforced_on_a_changed_dataset(dataset, tmp_path):
    directory, _ = dataset
    workdir = tmp_path / "work"
    preprocess.run(config_for(directory), str(workdir))
    schema_path = workdir / "schema" / "schema.pbtxt"
    inferred = schema_path.read_bytes()
    _rerun(config_for(directory), workdir)  # the same data: checked against the kept schema
    manifest = stage.read_json(os.path.join(preprocess_dir(workdir), "manifest.json"))
    assert manifest["data_validation"]["schema_origin"] == "earlier run"
    old_manifest = manifest
    # Another dataset: 20x20 images.
    idx_fixtures.write_dataset(
        tmp_path / "small", num_train=NUM_TRAIN, num_test=NUM_TEST, image_hw=(20, 20)
    )
    changed = config_for(tmp_path / "small", image_shape=(20, 20, 1))
    with pytest.raises(PipelineError) as info:
        _rerun(changed, workdir)
    message = str(info.value)
    assert "train: image: shape 20,20,1 in the records, 28,28,1 in the schema" in message
    assert f"delete {schema_path} to infer a new schema" in message
    # Nothing of the failed run is marked complete: the old output is back, unchanged.
    assert stage.read_json(os.path.join(preprocess_dir(workdir), "manifest.json")) == old_manifest
    assert schema_path.read_bytes() == inferred
    # Re-inferring: delete the schema; the changed data then passes and is the new contract.
    os.remove(schema_path)
    _rerun(changed, workdir)
    new = parse(str(schema_path), schema_pb2.Schema())
    image = next(f for f in new.feature if f.name == "image")
    assert data_schema.tag_value(image, "image_shape") == "20,20,1"


DOMAIN = r"train: label: value 9 is above the schema's int_domain \[0, 4\] \(\d+ records outside\)"
DTYPE = r"test: image: dtype uint8 in the records, float32 in the schema"
COUNT = rf"test: {NUM_TEST} records: fewer than .*min_examples_count \({NUM_TEST + 1}\)"


@pytest.mark.parametrize(
    "schema_kwargs, match",
    [
        ({"label_max": 4}, DOMAIN),
        ({"image_dtype": "float32"}, DTYPE),
        ({"min_examples": NUM_TEST + 1}, COUNT),
    ],
)
def test_a_given_schema_is_enforced(dataset, tmp_path, schema_kwargs, match):
    directory, _ = dataset
    config = config_for(directory)
    config.data.schema = schema_fixtures.write_schema(
        tmp_path / "mine.pbtxt", num_classes=10, **schema_kwargs
    )
    workdir = str(tmp_path / "work")
    with pytest.raises(PipelineError, match=match) as info:
        preprocess.run(config, workdir)
    assert "config.data.schema" in str(info.value)
    assert not stage.is_complete(workdir, "preprocess")
    assert not os.path.exists(
        os.path.join(workdir, "schema")
    )  # a given schema is never copied there


def test_a_given_schema_that_fits_is_used_and_not_copied(dataset, tmp_path):
    directory, _ = dataset
    config = config_for(directory)
    config.data.schema = schema_fixtures.write_schema(tmp_path / "mine.pbtxt", num_classes=10)
    workdir = str(tmp_path / "work")
    preprocess.run(config, workdir)
    out = preprocess_dir(workdir)
    assert parse(os.path.join(out, "schema.pbtxt"), schema_pb2.Schema()) == schema_fixtures.schema(
        num_classes=10
    )
    entry = stage.read_json(os.path.join(out, "manifest.json"))["data_validation"]
    assert entry["schema_origin"] == "config.data.schema"
    assert entry["schema_source"] == config.data.schema
    assert not os.path.exists(os.path.join(workdir, "schema"))


@pytest.mark.parametrize(
    "content, match", [(None, "no such file"), ("feature {", "not a text-format Schema")]
)
def test_an_unreadable_given_schema_names_the_field(dataset, tmp_path, content, match):
    directory, _ = dataset
    config = config_for(directory)
    config.data.schema = str(tmp_path / "mine.pbtxt")
    if content is not None:
        (tmp_path / "mine.pbtxt").write_text(content)
    with pytest.raises(PipelineError, match=rf"config.data.schema = '.*mine.pbtxt'.*{match}"):
        preprocess.run(config, str(tmp_path / "work"))
    # Read before the Beam job: nothing was started.
    assert not os.path.exists(tmp_path / "work" / "preprocess.partial")


def test_a_class_missing_from_test_stops_the_stage(tmp_path):
    data = idx_fixtures.write_dataset(tmp_path / "idx", num_train=NUM_TRAIN, num_test=NUM_TEST)
    labels = data["test"].labels
    labels[labels == 3] = 4
    idx_fixtures.write_idx(data["test"].labels_path, labels)
    workdir = str(tmp_path / "work")
    with pytest.raises(PipelineError) as info:
        preprocess.run(config_for(tmp_path / "idx"), workdir)
    message = str(info.value)
    assert "test: label: class 3 has no record in the test split" in message
    assert "test: clean_label: class 3 has no record" in message
    assert "train:" not in message
    assert not stage.is_complete(workdir, "preprocess")
    assert not os.path.exists(os.path.join(workdir, "schema"))  # nothing inferred from it
    anomalies = parse(
        os.path.join(workdir, "preprocess.partial", "anomalies-test.pbtxt"),
        anomalies_pb2.Anomalies(),
    )
    assert anomalies.anomaly_info["label"].severity == INFO.ERROR


def test_a_class_the_noise_empties_in_train_stops_the_stage(dataset, tmp_path):
    directory, _ = dataset
    matrix = np.eye(10)
    matrix[3] = np.eye(10)[5]  # every clean 3 is labelled 5: no noisy 3 is left
    config = config_for(directory)
    config.data.noise.kind = "matrix"
    config.data.noise.matrix = tuple(tuple(row) for row in matrix.tolist())
    config.data.imbalance.kind = "none"
    with pytest.raises(
        PipelineError, match=r"train: label: class 3 has no record in the train split"
    ):
        preprocess.run(config, str(tmp_path / "work"))
    assert not stage.is_complete(str(tmp_path / "work"), "preprocess")


def test_a_skewed_test_split_is_a_soft_anomaly(tmp_path, caplog):
    data = idx_fixtures.write_dataset(tmp_path / "idx", num_train=NUM_TRAIN, num_test=NUM_TEST)
    labels = data["test"].labels
    labels[: NUM_TEST // 2] = 0  # half of the test split is class 0
    idx_fixtures.write_idx(data["test"].labels_path, labels)
    caplog.set_level(logging.WARNING)
    preprocess.run(config_for(tmp_path / "idx"), str(tmp_path / "work"))
    out = preprocess_dir(tmp_path / "work")  # complete: soft anomalies do not stop it
    train_share = np.mean(data["train"].labels == 0)
    distance = np.mean(labels == 0) - train_share
    assert distance > 0.3
    entry = stage.read_json(os.path.join(out, "manifest.json"))["data_validation"]
    (soft,) = entry["soft_anomalies"]["test"]
    assert soft.startswith("test: clean_label: the class distribution differs from the train split")
    assert f"L-infinity {distance:.4f} > threshold 0.05" in soft
    assert soft in caplog.text
    anomalies = parse(os.path.join(out, "anomalies-test.pbtxt"), anomalies_pb2.Anomalies())
    info = anomalies.anomaly_info["clean_label"]
    assert info.severity == INFO.WARNING
    assert [r.type for r in info.reason] == [INFO.COMPARATOR_L_INFTY_HIGH]


def test_the_default_schema_field_leaves_fingerprints_unchanged(dataset):
    # Workdirs made before config.data.schema existed stay current; a given schema
    # is a change of the preprocess stage's input.
    directory, _ = dataset
    config = config_for(directory)
    default = stage.fingerprints(config)
    with config.unlocked():
        del config.data["schema"]
    assert stage.fingerprints(config) == default
    with config.unlocked():
        config.data.schema = "configs/my_schema.pbtxt"
    assert stage.fingerprints(config)["preprocess"] != default["preprocess"]
