"""End-to-end tests of the Beam `preprocess` stage on tiny IDX datasets.

The reference for what the records must hold is the in-memory numpy path,
`corrupt_labels` + the targets + `imbalance_keep_mask`, which shares only the
per-example hash with the Beam job (the job selects through per-chunk top-k, a
combiner and thresholds instead of a global mask). The reference builds the noise
matrix and the long-tailed / counts targets itself, from the formulas, rather than
through the job's `noise_matrix` / `Plan.imbalance_targets`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from configs import fashion_mnist_hetero
from har_tf import corruption
from pipeline import preprocess
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data import plan as preprocess_plan
from pipeline.data import records, sources
from tests import harness
from tests.pipeline import idx_fixtures, schema_fixtures

NUM_TRAIN, NUM_TEST = 3_200, 600  # More than the smoke limits (3,000 / 500).


def smoke_config(data_dir, **data):
    config = fashion_mnist_hetero.get_config("smoke")
    config.data.data_dir = str(data_dir)
    # Several chunks, the last one short: exercises the per-chunk top-k merge.
    config.data.chunk_size = 700
    for key, value in data.items():
        config.data[key] = value
    return config


def read_split(stage_dir: str, split: str, image_shape) -> dict[str, np.ndarray]:
    """All records of a split, sorted by id: id, label, clean_label, image [N, H, W, C]."""
    ds = tf.data.TFRecordDataset(records.shard_paths(stage_dir, split))
    ds = ds.map(records.parser(image_shape)).batch(1024)
    parts: dict[str, list] = {}
    for batch in ds.as_numpy_iterator():
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
    out = {key: np.concatenate(value) for key, value in parts.items()}
    order = np.argsort(out["id"])
    return {key: value[order] for key, value in out.items()}


def shard_ids(path: str) -> np.ndarray:
    """The ids of one shard file's records, in file order."""
    ids = [
        tf.io.parse_single_example(r, {"id": records.FEATURES["id"]})["id"].numpy()
        for r in tf.data.TFRecordDataset(path)
    ]
    return np.asarray(ids, dtype=np.int64)


def assert_sharded_by_id(stage_dir: str, split: str, kept_ids, num_shards: int) -> None:
    """Shard s holds exactly the kept ids with id % num_shards == s, ascending."""
    paths = records.shard_paths(stage_dir, split)
    assert [os.path.basename(p) for p in paths] == [
        records.shard_name(split, s, num_shards) for s in range(num_shards)
    ]
    kept_ids = np.sort(np.asarray(kept_ids, dtype=np.int64))
    for s, path in enumerate(paths):
        np.testing.assert_array_equal(shard_ids(path), kept_ids[kept_ids % num_shards == s])


def reference_matrix(config) -> np.ndarray:
    """T[clean, noisy] of `config.data.noise`, built here from its definition."""
    noise, num_classes = config.data.noise, config.data.num_classes
    if noise.kind == "pairs":
        return corruption.pair_swap_matrix(num_classes, noise.pairs, noise.flip_prob)
    if noise.kind == "uniform":  # 1 - r stays, r / (C - 1) to each other class
        matrix = np.full((num_classes, num_classes), noise.rate / (num_classes - 1))
        np.fill_diagonal(matrix, 1.0 - noise.rate)
        return matrix
    if noise.kind == "asymmetric":  # class c -> targets[c] with rates[c]
        matrix = np.eye(num_classes)
        for c, (rate, target) in enumerate(zip(noise.rates, noise.targets, strict=True)):
            matrix[c, c] -= rate
            matrix[c, target] += rate
        return matrix
    if noise.kind == "matrix":
        return np.asarray(noise.matrix, dtype=np.float64)
    assert noise.kind == "none", noise.kind
    return np.eye(num_classes)


def reference_targets(config, counts: np.ndarray, n_max: int) -> np.ndarray:
    """Examples kept per class by `config.data.imbalance`, from its definition."""
    imbalance, num_classes = config.data.imbalance, config.data.num_classes
    if imbalance.kind == "step":
        return corruption.step_imbalance_targets(
            counts, imbalance.classes, imbalance.ratio, n_max=n_max
        )
    if imbalance.kind == "long_tailed":  # Cao et al. 2019: n_max * ratio^(-c / (C - 1))
        tail = [
            int(n_max * (1 / imbalance.ratio) ** (c / (num_classes - 1)))
            for c in range(num_classes)
        ]
        return np.minimum(counts, tail)
    if imbalance.kind == "counts":
        return np.minimum(counts, imbalance.counts)
    assert imbalance.kind == "none", imbalance.kind
    return counts


def reference_train(data, config) -> dict[str, np.ndarray]:
    """The records the train split must hold, computed in memory with numpy."""
    n = min(config.data.limit_train or NUM_TRAIN, NUM_TRAIN)
    num_classes = config.data.num_classes
    clean = data["train"].labels[:n].astype(np.int64)
    ids = np.arange(n)
    matrix = reference_matrix(config)
    noisy = corruption.corrupt_labels(clean, ids, matrix, seed=config.seed)
    by = noisy if config.data.imbalance.by == "noisy" else clean
    targets = reference_targets(
        config,
        np.bincount(by, minlength=num_classes),
        n_max=int(np.bincount(clean, minlength=num_classes).max()),  # source size, pre-noise
    )
    keep = corruption.imbalance_keep_mask(by, ids, targets, seed=config.seed)
    return {
        "id": ids[keep],
        "label": noisy[keep],
        "clean_label": clean[keep],
        "all_clean": clean,
        "all_noisy": noisy,
        "targets": targets,
        "matrix": matrix,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # Train gzipped, test raw: both file kinds go through the reader.
    directory = tmp_path_factory.mktemp("idx")
    data = idx_fixtures.write_dataset(
        directory, num_train=NUM_TRAIN, num_test=NUM_TEST, gzip_splits=("train",)
    )
    return directory, data


@pytest.fixture(scope="module")
def smoke_run(dataset, tmp_path_factory):
    """One preprocess run of the smoke config, shared by the read-only tests below."""
    directory, data = dataset
    config = smoke_config(directory)
    workdir = str(tmp_path_factory.mktemp("work"))
    preprocess.run(config, workdir)
    out = stage.stage_dir(workdir, "preprocess")
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    return config, data, out, manifest


def test_stage_dir_holds_shards_manifest_and_nothing_else(smoke_run):
    config, _, out, manifest = smoke_run
    expected = {f"{s}-0000{i}-of-00002.tfrecord" for s in ("train", "test") for i in (0, 1)}
    validation = {
        "statistics.pbtxt",
        "schema.pbtxt",
        "anomalies-train.pbtxt",
        "anomalies-test.pbtxt",
    }
    assert set(os.listdir(out)) == expected | validation | {"manifest.json", stage.METADATA}
    # The inferred schema is kept beside the stage directories, for later runs.
    workdir = os.path.dirname(out)
    assert sorted(os.listdir(workdir)) == ["preprocess", "schema"]
    assert os.listdir(os.path.join(workdir, "schema")) == ["schema.pbtxt"]
    for split in records.SPLITS:
        names = [os.path.basename(p) for p in records.shard_paths(out, split)]
        assert names == [f"{split}-00000-of-00002.tfrecord", f"{split}-00001-of-00002.tfrecord"]
        assert manifest["splits"][split]["shards"] == names
    assert not os.path.exists(out + ".partial")
    metadata = stage.read_json(os.path.join(out, stage.METADATA))
    assert metadata["config"]["data"]["limit_train"] == 3000


def test_train_records_equal_numpy_reference(smoke_run):
    config, data, out, manifest = smoke_run
    got = read_split(out, "train", manifest["image_shape"])
    want = reference_train(data, config)
    np.testing.assert_array_equal(got["id"], want["id"])
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["clean_label"], want["clean_label"])
    # The config's noise and cut really happened: some labels flipped, rare classes cut.
    assert np.any(got["label"] != got["clean_label"])
    assert manifest["imbalance"]["targets"] == want["targets"].tolist()
    assert np.bincount(got["label"], minlength=10)[0] < 50


def test_test_records_are_clean_and_uncut(smoke_run):
    config, data, out, manifest = smoke_run
    got = read_split(out, "test", manifest["image_shape"])
    n = config.data.limit_test
    np.testing.assert_array_equal(got["id"], np.arange(n))
    np.testing.assert_array_equal(got["label"], data["test"].labels[:n])
    np.testing.assert_array_equal(got["clean_label"], data["test"].labels[:n])
    np.testing.assert_array_equal(got["image"][..., 0], data["test"].images[:n])


def test_images_equal_source_pixels(smoke_run):
    _, data, out, manifest = smoke_run
    got = read_split(out, "train", manifest["image_shape"])
    assert got["image"].shape[1:] == (28, 28, 1) and got["image"].dtype == np.uint8
    for i in (0, len(got["id"]) // 2, len(got["id"]) - 1):
        np.testing.assert_array_equal(got["image"][i, :, :, 0], data["train"].images[got["id"][i]])
    np.testing.assert_array_equal(got["image"][..., 0], data["train"].images[got["id"]])


def test_manifest_counts_match_records(smoke_run):
    config, data, out, manifest = smoke_run
    want = reference_train(data, config)
    assert manifest["dataset"] == "fashion_mnist"
    assert manifest["source"] == str(config.data.data_dir)
    assert manifest["seed"] == config.seed
    assert manifest["num_classes"] == 10
    assert manifest["image_shape"] == [28, 28, 1]
    np.testing.assert_allclose(manifest["noise"]["transition_matrix"], want["matrix"])
    assert manifest["noise"]["kind"] == "pairs"
    assert manifest["imbalance"]["by"] == "noisy"
    for split in records.SPLITS:
        entry = manifest["splits"][split]
        got = read_split(out, split, manifest["image_shape"])
        assert entry["num_examples"] == len(got["id"])
        assert (
            entry["counts_after_cut"]["noisy"] == np.bincount(got["label"], minlength=10).tolist()
        )
        assert (
            entry["counts_after_cut"]["clean"]
            == np.bincount(got["clean_label"], minlength=10).tolist()
        )
        realized = corruption.transition_counts(got["clean_label"], got["label"], 10)
        assert entry["transition_counts"] == realized.tolist()
        np.testing.assert_allclose(entry["transition_rates"], corruption.row_normalize(realized))
    train = manifest["splits"]["train"]
    assert train["num_source_examples"] == 3000
    assert (
        train["counts_before_cut"]["clean"] == np.bincount(want["all_clean"], minlength=10).tolist()
    )
    assert (
        train["counts_before_cut"]["noisy"] == np.bincount(want["all_noisy"], minlength=10).tolist()
    )
    test = manifest["splits"]["test"]
    assert test["counts_before_cut"] == test["counts_after_cut"]
    assert test["num_source_examples"] == test["num_examples"] == 500


def test_shard_s_holds_ids_congruent_to_s_in_ascending_order(smoke_run):
    config, data, out, _ = smoke_run
    kept = {"train": reference_train(data, config)["id"], "test": np.arange(500)}
    for split in records.SPLITS:
        assert_sharded_by_id(out, split, kept[split], num_shards=2)


def test_rerun_of_the_same_config_writes_byte_identical_shards(smoke_run, tmp_path):
    config, _, out, manifest = smoke_run
    # The rerun is another process, as a user's rerun would be: serialization that
    # depends on per-process state (e.g. protobuf's map order) would show up here.
    result = _run_main(
        "--config=configs/fashion_mnist_hetero.py:smoke",
        f"--config.data.data_dir={config.data.data_dir}",
        f"--config.data.chunk_size={config.data.chunk_size}",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out2 = stage.stage_dir(str(tmp_path), "preprocess")
    assert out2 != out
    for split in records.SPLITS:
        paths = records.shard_paths(out, split)
        paths2 = records.shard_paths(out2, split)
        assert [os.path.basename(p) for p in paths2] == [os.path.basename(p) for p in paths]
        for a, b in zip(paths, paths2, strict=True):
            with open(a, "rb") as fa, open(b, "rb") as fb:
                bytes_a, bytes_b = fa.read(), fb.read()
            assert bytes_a, f"{a} is empty"
            assert bytes_a == bytes_b, f"{os.path.basename(a)} differs between runs"
    assert stage.read_json(os.path.join(out2, "manifest.json")) == manifest


def test_rerun_with_other_chunking_and_sharding_gives_identical_records(
    smoke_run, tmp_path, caplog
):
    config, data, out, manifest = smoke_run
    other = smoke_config(config.data.data_dir, chunk_size=1_234, num_shards=3)
    caplog.set_level(logging.INFO)
    preprocess.run(other, str(tmp_path))
    # The in-process runner was used: nothing tried Prism or a download.
    assert "FnApiRunner" in caplog.text
    assert "prism" not in caplog.text.lower() and "download" not in caplog.text.lower()
    out2 = stage.stage_dir(str(tmp_path), "preprocess")
    assert_sharded_by_id(out2, "train", reference_train(data, config)["id"], num_shards=3)
    assert_sharded_by_id(out2, "test", np.arange(500), num_shards=3)
    for split in records.SPLITS:
        a = read_split(out, split, manifest["image_shape"])
        b = read_split(out2, split, manifest["image_shape"])
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    manifest2 = stage.read_json(os.path.join(out2, "manifest.json"))
    for split in records.SPLITS:
        manifest["splits"][split].pop("shards")
        manifest2["splits"][split].pop("shards")
    assert manifest2 == manifest
    # The statistics are merged exactly from per-chunk summaries: the same bytes.
    with (
        open(os.path.join(out, "statistics.pbtxt")) as a,
        open(os.path.join(out2, "statistics.pbtxt")) as b,
    ):
        assert a.read() == b.read()


def test_cut_by_clean_label_and_other_seed(dataset, tmp_path):
    directory, data = dataset
    config = smoke_config(directory)
    config.seed = 5
    config.data.imbalance.by = "clean"
    config.data.imbalance.ratio = 4.0
    preprocess.run(config, str(tmp_path))
    out = stage.stage_dir(str(tmp_path), "preprocess")
    got = read_split(out, "train", (28, 28, 1))
    want = reference_train(data, config)
    for key in ("id", "label", "clean_label"):
        np.testing.assert_array_equal(got[key], want[key])
    counts = np.bincount(got["clean_label"], minlength=10)
    np.testing.assert_array_equal(counts, want["targets"])


def run_and_compare(config, data, workdir: str) -> tuple[dict, dict, dict]:
    """Runs preprocess; asserts the train records equal the numpy reference exactly."""
    preprocess.run(config, workdir)
    out = stage.stage_dir(workdir, "preprocess")
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    got = read_split(out, "train", (28, 28, 1))
    want = reference_train(data, config)
    for key in ("id", "label", "clean_label"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["image"][..., 0], data["train"].images[got["id"]])
    cut = config.data.imbalance.kind != "none"
    assert manifest["imbalance"]["targets"] == (want["targets"].tolist() if cut else None)
    np.testing.assert_allclose(manifest["noise"]["transition_matrix"], want["matrix"], atol=1e-15)
    return got, want, manifest


def test_uniform_noise_and_long_tailed_cut_equal_numpy_reference(dataset, tmp_path):
    directory, data = dataset
    config = smoke_config(directory)
    config.data.noise.kind = "uniform"
    config.data.noise.rate = 0.3
    config.data.imbalance.kind = "long_tailed"
    # A steep tail: the head classes keep far more than n / ratio = 60, which a
    # step-style candidate bound would have cut short.
    config.data.imbalance.ratio = 50.0
    got, want, _ = run_and_compare(config, data, str(tmp_path))
    noisy_counts = np.bincount(got["label"], minlength=10)
    np.testing.assert_array_equal(noisy_counts, want["targets"])
    # The tail really is a tail: every class cut, the last to n_max / 50.
    n_max = np.bincount(want["all_clean"], minlength=10).max()
    assert want["targets"][9] == int(n_max / 50) and np.all(np.diff(want["targets"][1:]) < 0)
    assert want["targets"][0] > 250 and want["targets"][3] > 60
    # Uniform noise moves ~30% of labels, to every other class.
    assert 0.25 < np.mean(want["all_noisy"] != want["all_clean"]) < 0.35
    assert np.all(corruption.transition_counts(want["all_clean"], want["all_noisy"], 10) > 0)


def test_matrix_noise_and_counts_cut_by_clean_label_equal_numpy_reference(
    dataset, tmp_path, caplog
):
    directory, data = dataset
    caplog.set_level(logging.WARNING)
    matrix = np.eye(10)
    matrix[7] = [0.1, 0, 0, 0, 0, 0, 0, 0.5, 0.4, 0]  # class 7 -> 0 or 8
    matrix[2] = [0, 0, 0.7, 0.3, 0, 0, 0, 0, 0, 0]
    config = smoke_config(directory)
    config.seed = 3
    config.data.noise.kind = "matrix"
    config.data.noise.matrix = tuple(tuple(row) for row in matrix.tolist())
    config.data.imbalance.kind = "counts"
    config.data.imbalance.by = "clean"
    # Class 5 asks for more than it has: it keeps all of them.
    config.data.imbalance.counts = (30, 300, 5, 40, 250, 10_000, 20, 60, 300, 1)
    got, want, manifest = run_and_compare(config, data, str(tmp_path))
    clean_counts = np.bincount(want["all_clean"], minlength=10)
    np.testing.assert_array_equal(
        np.bincount(got["clean_label"], minlength=10),
        np.minimum(clean_counts, config.data.imbalance.counts),
    )
    assert manifest["imbalance"]["kind"] == "counts"
    warning = f"class 5 has {clean_counts[5]} examples by clean label, fewer than the 10000"
    assert warning in caplog.text
    realized = np.asarray(manifest["splits"]["train"]["transition_counts_before_cut"])
    assert realized[7, 8] > 0 and realized[7, 1] == 0 and realized[2, 3] > 0


def test_asymmetric_noise_equals_numpy_reference(dataset, tmp_path):
    directory, data = dataset
    config = smoke_config(directory)
    config.data.noise.kind = "asymmetric"
    config.data.noise.rates = (0.0, 0.05, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3)
    config.data.noise.targets = (0, 0, 6, 3, 4, 5, 6, 7, 8, 1)
    config.data.imbalance.kind = "none"
    got, want, _ = run_and_compare(config, data, str(tmp_path))
    moves = set(
        zip(
            got["clean_label"][got["label"] != got["clean_label"]].tolist(),
            got["label"][got["label"] != got["clean_label"]].tolist(),
            strict=True,
        )
    )
    assert moves == {(1, 0), (2, 6), (9, 1)}


def test_rare_but_clean_variant_equals_numpy_reference(dataset, tmp_path):
    directory, data = dataset
    config = fashion_mnist_hetero.get_config("smoke,rare_clean")
    config.data.data_dir = str(directory)
    config.data.chunk_size = 700
    assert config.data.imbalance.classes == (1, 3, 5, 7)
    got, want, _ = run_and_compare(config, data, str(tmp_path))
    rare = np.isin(got["clean_label"], (1, 3, 5, 7))
    # The rare classes are clean: none of their labels moved, and they were cut.
    np.testing.assert_array_equal(got["label"][rare], got["clean_label"][rare])
    assert np.any(got["label"][~rare] != got["clean_label"][~rare])
    n_max = np.bincount(want["all_clean"], minlength=10).max()
    np.testing.assert_array_equal(
        np.bincount(got["label"], minlength=10)[[1, 3, 5, 7]], n_max // 10
    )


def test_no_noise_no_cut(dataset, tmp_path):
    directory, data = dataset
    config = smoke_config(directory, limit_train=0, limit_test=0)
    config.data.noise.kind = "none"
    config.data.imbalance.kind = "none"
    preprocess.run(config, str(tmp_path))
    out = stage.stage_dir(str(tmp_path), "preprocess")
    got = read_split(out, "train", (28, 28, 1))
    np.testing.assert_array_equal(got["id"], np.arange(NUM_TRAIN))
    np.testing.assert_array_equal(got["label"], data["train"].labels)
    np.testing.assert_array_equal(got["clean_label"], data["train"].labels)
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    assert manifest["imbalance"]["targets"] is None
    np.testing.assert_array_equal(manifest["noise"]["transition_matrix"], np.eye(10))


def test_empty_shards_are_written_as_empty_files(dataset, tmp_path):
    directory, _ = dataset
    config = smoke_config(directory, limit_train=20, limit_test=3, num_shards=5)
    config.data.noise.kind = "none"
    config.data.imbalance.kind = "none"
    # 3 test records cannot hold 10 classes: a schema whose classes may be missing.
    schema = schema_fixtures.write_schema(tmp_path / "s.pbtxt", num_classes=10, categorical=False)
    config.data.schema = schema
    preprocess.run(config, str(tmp_path))
    out = stage.stage_dir(str(tmp_path), "preprocess")
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    names = [records.shard_name("test", s, 5) for s in range(5)]
    assert manifest["splits"]["test"]["shards"] == names
    # Test ids 0, 1, 2: shards 3 and 4 hold nothing but exist.
    sizes = [os.path.getsize(os.path.join(out, name)) for name in names]
    assert sizes[3] == sizes[4] == 0 and all(sizes[:3])
    assert_sharded_by_id(out, "test", np.arange(3), num_shards=5)
    assert_sharded_by_id(out, "train", np.arange(20), num_shards=5)
    np.testing.assert_array_equal(read_split(out, "test", (28, 28, 1))["id"], np.arange(3))
    # No temporary file is left behind.
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("split, index", [("train", 123), ("test", 77)])
def test_out_of_range_label_fails_without_output(tmp_path, split, index):
    data = idx_fixtures.write_dataset(tmp_path / "idx", num_train=800, num_test=100)
    idx_fixtures.set_label(data[split], index, 10)
    workdir = str(tmp_path / "work")
    with pytest.raises(PipelineError) as info:
        preprocess.run(smoke_config(tmp_path / "idx", chunk_size=300), workdir)
    message = str(info.value)
    assert data[split].labels_path in message
    assert f"index {index}" in message and "outside [0, 10)" in message
    assert not os.path.exists(stage.stage_dir(workdir, "preprocess"))


def test_num_classes_smaller_than_labels_is_the_same_error(dataset, tmp_path):
    directory, _ = dataset
    config = smoke_config(directory, num_classes=5)
    config.data.noise.pairs = ((0, 1),)
    config.data.imbalance.classes = (0,)
    with pytest.raises(PipelineError, match=r"outside \[0, 5\).*num_classes = 5"):
        preprocess.run(config, str(tmp_path))
    assert not os.path.exists(stage.stage_dir(str(tmp_path), "preprocess"))


def test_cut_to_zero_names_the_class(dataset, tmp_path):
    directory, _ = dataset
    config = smoke_config(directory)
    config.data.imbalance.ratio = 1e6
    with pytest.raises(PipelineError, match="leaves class 0 empty"):
        preprocess.run(config, str(tmp_path))
    assert not os.path.exists(stage.stage_dir(str(tmp_path), "preprocess"))


def test_long_tail_to_zero_names_the_first_empty_class(dataset, tmp_path):
    directory, data = dataset
    config = smoke_config(directory)
    config.data.imbalance.kind = "long_tailed"
    config.data.imbalance.ratio = 1e6
    n_max = int(np.bincount(data["train"].labels[:3000], minlength=10).max())
    first = next(c for c in range(10) if int(n_max * 1e-6 ** (c / 9)) == 0)
    assert first == 4  # ~330 * 10^(-6 * 4 / 9) = 0.7
    with pytest.raises(PipelineError, match=f"long_tailed imbalance leaves class {first} empty"):
        preprocess.run(config, str(tmp_path))
    assert not os.path.exists(stage.stage_dir(str(tmp_path), "preprocess"))


def test_counts_cut_of_a_class_the_noise_emptied_names_the_class(dataset, tmp_path):
    directory, _ = dataset
    matrix = np.eye(10)
    matrix[3] = np.eye(10)[4]  # every clean 3 is labelled 4: no noisy 3 is left
    config = smoke_config(directory)
    config.data.noise.kind = "matrix"
    config.data.noise.matrix = tuple(tuple(row) for row in matrix.tolist())
    config.data.imbalance.kind = "counts"
    config.data.imbalance.counts = (50,) * 10
    with pytest.raises(
        PipelineError,
        match=r"counts imbalance leaves class 3 empty: it has 0 examples by noisy label "
        r"and the cut target is config.data.imbalance.counts\[3\] = 50; no example",
    ):
        preprocess.run(config, str(tmp_path))
    assert not os.path.exists(stage.stage_dir(str(tmp_path), "preprocess"))


def test_unknown_dataset(tmp_path):
    config = smoke_config(tmp_path)
    config.data.dataset = "cifar11"
    with pytest.raises(
        PipelineError, match=r"unknown dataset 'cifar11'.*fashion_mnist, mnist.*'tfds'"
    ):
        preprocess.run(config, str(tmp_path / "work"))
    assert not os.path.exists(tmp_path / "work")


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PipelineError, match=f"config.data.data_dir = '{missing}'.*not a dir"):
        preprocess.run(smoke_config(missing), str(tmp_path / "work"))


def test_data_dir_without_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="holds no train-images-idx3-ubyte"):
        preprocess.run(smoke_config(tmp_path / "empty"), str(tmp_path / "work"))


ASYMMETRIC = dict(kind="asymmetric", rates=(0.1,) * 10, targets=(1, 0, 3, 2, 5, 4, 7, 6, 9, 8))


@pytest.mark.parametrize(
    "section, fields, match",
    [
        ("noise", dict(kind="uniformm"), r"noise.kind = 'uniformm'; expected one of none, pairs"),
        ("noise", dict(flip_prob=1.5), r"config.data.noise.flip_prob = 1.5; must be a prob"),
        ("noise", dict(pairs=((0, 6), (6, 2))), r"noise.pairs: class 6 appears in two pairs"),
        ("noise", dict(kind="groups", groups=((0, 6, 2), (2, 3))), r"noise.groups: class 2"),
        ("noise", dict(kind="groups", flip_prob=-0.1), r"noise.flip_prob = -0.1"),
        ("noise", dict(kind="uniform", rate=1.2), r"noise.rate = 1.2; must be a probability"),
        ("noise", dict(kind="cifar100_superclass"), r"needs config.data.num_classes = 100, got 10"),
        ("noise", dict(kind="asymmetric"), r"noise.rates has 0 entries; .*num_classes = 10"),
        ("noise", {**ASYMMETRIC, "targets": (1,) * 9}, r"noise.targets: targets has 9 entries"),
        ("noise", {**ASYMMETRIC, "targets": (10,) * 10}, r"noise.targets: targets\[0\]: class 10"),
        ("noise", {**ASYMMETRIC, "rates": (0.1,) * 9 + (2.0,)}, r"noise.rates: rates\[9\] must"),
        ("noise", dict(kind="matrix"), r"noise.matrix: transition matrix must be square"),
        (
            "noise",
            dict(
                kind="matrix",
                matrix=tuple(tuple(r) for r in np.eye(10)[:, ::-1].tolist()[:9]) + ((0.5,) * 10,),
            ),
            r"noise.matrix: transition matrix row 9 sums to 5.0, not 1",
        ),
        ("imbalance", dict(kind="longtail"), r"imbalance.kind = 'longtail'; expected one of"),
        ("imbalance", dict(ratio=0.5), r"imbalance.ratio: imbalance ratio must be >= 1"),
        ("imbalance", dict(kind="long_tailed", ratio=0.5), r"imbalance.ratio: .*>= 1"),
        ("imbalance", dict(classes=(0, 12)), r"imbalance.classes: .*class 12 is outside"),
        ("imbalance", dict(by="both"), r"imbalance.by = 'both'"),
        ("imbalance", dict(kind="counts"), r"imbalance.counts: .*0 entries; expected one per"),
        (
            "imbalance",
            dict(kind="counts", counts=(5, 5, 5, 0, 5, 5, 5, 5, 5, 5)),
            r"imbalance.counts\[3\] = 0 would leave class 3 empty",
        ),
        (
            "imbalance",
            dict(kind="counts", counts=(5, 5, 5, -2, 5, 5, 5, 5, 5, 5)),
            r"imbalance.counts: class 3: the count to keep must be an integer >= 0, got -2",
        ),
    ],
)
def test_bad_corruption_config(dataset, tmp_path, section, fields, match):
    directory, _ = dataset
    config = smoke_config(directory)
    for field, value in fields.items():
        config.data[section][field] = value
    with pytest.raises(PipelineError, match=match):
        preprocess.run(config, str(tmp_path / "work"))
    assert not os.path.exists(tmp_path / "work" / "preprocess")


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("cifar10_hetero", {}),
        ("groups", dict(groups=((0, 2, 4), (6, 7)))),
        ("uniform", dict(rate=0.5)),
        ("asymmetric", ASYMMETRIC),
        ("matrix", dict(matrix=tuple(tuple(r) for r in np.full((10, 10), 0.1).tolist()))),
    ],
)
def test_noise_matrix_of_each_kind_is_the_corruption_function(dataset, kind, extra):
    """The plan's matrix is the `har_tf.corruption` builder's (hand-checked there)."""
    config = smoke_config(dataset[0])
    config.data.noise.kind = kind
    for field, value in extra.items():
        config.data.noise[field] = value
    got = preprocess.noise_matrix(config.data.noise, 10)
    want = {
        "cifar10_hetero": lambda: corruption.cifar10_hetero_matrix(0.4),
        "groups": lambda: corruption.group_flip_matrix(10, ((0, 2, 4), (6, 7)), 0.4),
        "uniform": lambda: corruption.uniform_noise_matrix(10, 0.5),
        "asymmetric": lambda: corruption.asymmetric_noise_matrix(
            10, ASYMMETRIC["rates"], ASYMMETRIC["targets"]
        ),
        "matrix": lambda: np.full((10, 10), 0.1),
    }[kind]()
    np.testing.assert_array_equal(got, want)
    assert preprocess.make_plan(config).noise_matrix.tolist() == want.tolist()


def test_cifar100_superclass_plan_matrix():
    noise = fashion_mnist_hetero.get_config().data.noise
    noise.kind = "cifar100_superclass"
    np.testing.assert_array_equal(
        preprocess.noise_matrix(noise, 100), corruption.cifar100_superclass_matrix()
    )


def test_image_shape_mismatch(dataset, tmp_path):
    directory, _ = dataset
    with pytest.raises(PipelineError, match=r"shape \(28, 28, 1\).*image_shape"):
        preprocess.run(smoke_config(directory, image_shape=(32, 32, 3)), str(tmp_path))


def test_unknown_beam_option_is_an_error():
    with pytest.raises(PipelineError, match="--direct_num_wrkers"):
        preprocess.pipeline_options(["--direct_num_wrkers=2"])
    options = preprocess.pipeline_options(["--direct_num_workers=2"])
    assert options.get_all_options()["runner"] == "FnApiRunner"
    assert options.get_all_options()["direct_num_workers"] == 2
    runner = preprocess.pipeline_options(["--runner=BundleBasedDirectRunner"])
    assert runner.get_all_options()["runner"] == "BundleBasedDirectRunner"


def test_already_complete_stage_is_an_error(smoke_run):
    config, _, out, _ = smoke_run
    with pytest.raises(PipelineError, match="already completed"):
        preprocess.run(config, os.path.dirname(out))


# ----------------------------------------------------------------------------------
# As a program


def _run_main(*args, env=None):
    return harness.run_module("pipeline.preprocess", *args, **(env or {}))


@pytest.mark.slow
def test_main_runs_skips_and_reports_errors(dataset, tmp_path):
    directory, _ = dataset
    config = "--config=configs/fashion_mnist_hetero.py:smoke"
    workdir = str(tmp_path / "work")
    result = _run_main(config, f"--config.data.data_dir={directory}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = stage.read_json(os.path.join(workdir, "preprocess", "manifest.json"))
    assert manifest["splits"]["train"]["num_source_examples"] == 3000
    # A second run finds the stage complete and skips it.
    again = _run_main(config, f"--config.data.data_dir={directory}", f"--workdir={workdir}")
    assert again.returncode == 0 and "already complete" in again.stderr

    missing = _run_main(
        config, f"--config.data.data_dir={tmp_path / 'nope'}", f"--workdir={tmp_path / 'w2'}"
    )
    assert missing.returncode == 1
    assert "error: preprocess: config.data.data_dir" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_main_rejects_misspelled_override(dataset, tmp_path):
    directory, _ = dataset
    result = _run_main(
        "--config=configs/fashion_mnist_hetero.py:smoke",
        f"--config.data.data_dir={directory}",
        "--config.data.limit_trian=5",
        f"--workdir={tmp_path}",
    )
    assert result.returncode != 0
    assert "limit_trian" in result.stderr
    assert not os.path.exists(tmp_path / "preprocess")


def test_tfds_fallback_failure_explains_the_fix(tmp_path, monkeypatch):
    # No local data anywhere, and the download fails (as it does without network).
    monkeypatch.delenv(sources.ENV_DATA_DIR, raising=False)
    monkeypatch.setitem(
        sources.DATASETS,
        "fashion_mnist",
        sources.DatasetSpec(
            "fashion_mnist", str(tmp_path / "absent"), "dataset-fashion-mnist", "fashion_mnist"
        ),
    )

    def offline(name):
        raise ConnectionError(f"cannot reach the download server for {name}")

    monkeypatch.setattr(sources.tfds, "_tfds_builder", offline)
    config = smoke_config("")
    with pytest.raises(PipelineError) as info:
        preprocess.run(config, str(tmp_path / "work"))
    message = str(info.value)
    assert "no local fashion_mnist IDX files were found" in message
    assert "TFDS download of 'fashion_mnist' failed" in message
    assert "cannot reach the download server" in message
    assert "apt-get install dataset-fashion-mnist" in message and "$HAR_DATA_DIR" in message


def test_a_cut_chunk_whose_thresholds_miss_a_class_is_an_error(dataset):
    """A runner that hands the cut's thresholds (a side input) over incomplete makes
    the chunk fail, naming the classes, instead of keeping the chunk whole."""
    plan = preprocess.make_plan(smoke_config(dataset[0]))
    labels = preprocess_plan.read_labels((0, 700), plan, "train")
    by = preprocess_plan.cut_labels(plan, labels)
    present = sorted(set(plan.cut_classes) & set(by.tolist()))
    assert len(present) >= 2  # the chunk holds cut classes
    everything = {c: (float("inf"), 0) for c in plan.cut_classes}  # keeps every example
    assert preprocess_plan.keep_mask(labels, plan, everything).all()
    assert preprocess_plan.keep_mask(labels, plan, None).all()  # a split not cut
    del everything[present[0]]
    with pytest.raises(PipelineError, match=rf"miss class\(es\) \[{present[0]}\] of ids 0-699"):
        preprocess_plan.keep_mask(labels, plan, everything)
    listed = ", ".join(map(str, present))
    with pytest.raises(PipelineError, match=rf"miss class\(es\) \[{listed}\]"):
        preprocess_plan.keep_mask(labels, plan, {})
