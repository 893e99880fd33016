"""Tests of pipeline.data.sources: the IDX, .npz, image-list and TFDS readers, and where
data is looked for. Full preprocess runs on each source are in
test_preprocess_sources.py."""

from __future__ import annotations

import gzip
import io
import os
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import fashion_mnist_hetero
from pipeline.core.stage import PipelineError
from pipeline.data import sources
from tests.pipeline import idx_fixtures, source_fixtures, tfds_fixtures


def data_config(data_dir="", dataset="fashion_mnist"):
    return ml_collections.ConfigDict(dict(dataset=dataset, data_dir=str(data_dir)))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_chunks_equal_the_array(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, size=(37, 5, 4), dtype=np.uint8)
    path = idx_fixtures.write_idx(str(tmp_path / f"x{suffix}"), array)
    header = sources.read_idx_header(path, ndim=3)
    assert header.num_examples == 37 and header.dims == (37, 5, 4) and header.example_size == 20
    for start, stop in [(0, 37), (0, 1), (10, 20), (36, 37), (5, 5)]:
        np.testing.assert_array_equal(
            sources.read_idx_chunk(header, start, stop), array[start:stop]
        )
    with pytest.raises(ValueError, match="outside"):
        sources.read_idx_chunk(header, 30, 38)


def test_idx_source_reads_images_and_labels(tmp_path):
    data = idx_fixtures.write_dataset(tmp_path, num_train=50, num_test=20, gzip_splits=("test",))
    source = sources.IdxSource(str(tmp_path))
    source.check()
    assert source.num_examples("train") == 50 and source.num_examples("test") == 20
    assert source.image_shape("train") == (28, 28, 1)
    images, labels = source.read("test", 5, 15)
    assert images.shape == (10, 28, 28, 1) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[..., 0], data["test"].images[5:15])
    np.testing.assert_array_equal(labels, data["test"].labels[5:15])
    np.testing.assert_array_equal(source.read_labels("train", 0, 50), data["train"].labels)
    assert source.labels_origin("test") == data["test"].labels_path


def test_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(PipelineError, match=f"{path}: not an IDX file"):
        sources.read_idx_header(str(path), ndim=1)


def test_wrong_type_or_dims_names_the_file(tmp_path):
    path = str(tmp_path / "x")
    idx_fixtures.write_idx(path, np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(PipelineError, match=f"{path}: IDX file has 3 dimensions, expected 1"):
        sources.read_idx_header(path, ndim=1)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0\0\0\0")  # float32 data
    with pytest.raises(PipelineError, match="data type 0x0d"):
        sources.read_idx_header(path, ndim=1)


def test_truncated_raw_file_found_at_header(tmp_path):
    path = idx_fixtures.write_idx(str(tmp_path / "x"), np.zeros((10, 4, 4), np.uint8), truncate=5)
    with pytest.raises(PipelineError, match=f"{path}: truncated IDX file"):
        sources.read_idx_header(path, ndim=3)
    short = tmp_path / "y"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(PipelineError, match="truncated IDX header"):
        sources.read_idx_header(str(short), ndim=3)


def test_truncated_gzip_file_found_at_read(tmp_path):
    path = idx_fixtures.write_idx(
        str(tmp_path / "x.gz"), np.zeros((10, 4, 4), np.uint8), truncate=40
    )
    header = sources.read_idx_header(path, ndim=3)
    np.testing.assert_array_equal(sources.read_idx_chunk(header, 0, 5), 0)
    with pytest.raises(PipelineError, match=f"{path}: truncated IDX file.*ends after 7"):
        sources.read_idx_chunk(header, 5, 10)
    # A gzip stream cut short (not just short data) is also reported with the file.
    noise = np.random.default_rng(0).integers(0, 256, size=(10, 40, 40), dtype=np.uint8)
    raw = gzip.compress(idx_fixtures.idx_bytes(noise))  # Incompressible: half cuts the data.
    (tmp_path / "z.gz").write_bytes(raw[: len(raw) // 2])
    header = sources.read_idx_header(str(tmp_path / "z.gz"), ndim=3)
    with pytest.raises(PipelineError, match="z.gz"):
        sources.read_idx_chunk(header, 0, 10)


def test_not_gzip_despite_the_name(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(idx_fixtures.idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    with pytest.raises(PipelineError, match="x.gz: cannot read IDX header"):
        sources.read_idx_header(str(path), ndim=3)


def test_images_and_labels_count_mismatch(tmp_path):
    data = idx_fixtures.write_dataset(tmp_path, num_train=20, num_test=5)
    with gzip.open(data["train"].labels_path, "wb") as f:
        f.write(idx_fixtures.idx_bytes(data["train"].labels[:19]))
    with pytest.raises(PipelineError, match="holds 20 images but .* holds 19 labels"):
        sources.IdxSource(str(tmp_path)).check()


def test_resolution_prefers_config_then_env(tmp_path, monkeypatch):
    idx_fixtures.write_dataset(tmp_path / "a", num_train=10, num_test=5)
    idx_fixtures.write_dataset(tmp_path / "b", num_train=10, num_test=5)
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(tmp_path / "b"))
    assert sources.resolve_source(data_config(tmp_path / "a")).directory == str(tmp_path / "a")
    assert sources.resolve_source(data_config()).directory == str(tmp_path / "b")
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(tmp_path / "c"))
    with pytest.raises(PipelineError, match=r"\$HAR_DATA_DIR = '.*c' is not a directory"):
        sources.resolve_source(data_config())


def test_resolution_falls_back_to_debian_dir(tmp_path, monkeypatch):
    idx_fixtures.write_dataset(tmp_path / "deb", num_train=10, num_test=5)
    monkeypatch.delenv(sources.ENV_DATA_DIR, raising=False)
    monkeypatch.setitem(
        sources.DATASETS, "mnist", sources.DatasetSpec("mnist", str(tmp_path / "deb"), "", "mnist")
    )
    assert sources.resolve_source(data_config(dataset="mnist")).directory == str(tmp_path / "deb")


def test_resolution_skips_an_incomplete_debian_dir(tmp_path, monkeypatch):
    (tmp_path / "deb").mkdir()
    monkeypatch.delenv(sources.ENV_DATA_DIR, raising=False)
    monkeypatch.setitem(
        sources.DATASETS, "mnist", sources.DatasetSpec("mnist", str(tmp_path / "deb"), "", "mnist")
    )
    calls = []

    def offline(name, data_dir=""):
        calls.append(name)
        raise OSError("no network")

    monkeypatch.setattr(sources.tfds, "_tfds_builder", offline)
    with pytest.raises(PipelineError, match="TFDS download of 'mnist' failed.*HAR_DATA_DIR"):
        sources.resolve_source(data_config(dataset="mnist"))
    assert calls == ["mnist"]


def test_split_size_respects_limit(tmp_path):
    idx_fixtures.write_dataset(tmp_path, num_train=30, num_test=5)
    source = sources.IdxSource(str(tmp_path))
    assert sources.split_size(source, "train", 0) == 30
    assert sources.split_size(source, "train", 12) == 12
    assert sources.split_size(source, "train", 99) == 30
    with pytest.raises(PipelineError, match="limit_train"):
        sources.split_size(source, "train", -1)


# ----------------------------------------------------------------------------------
# .npz files


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("image_shape", [(6, 5), (6, 5, 3)])
def test_npz_chunks_equal_the_arrays(tmp_path, compressed, image_shape):
    data = source_fixtures.write_npz_dataset(
        tmp_path,
        num_train=37,
        num_test=4,
        image_shape=image_shape,
        compressed=("train", "test") if compressed else (),
    )
    source = sources.NpzSource(str(tmp_path))
    source.check()
    x = sources.read_npz_member(source.path("train"), "x")
    assert x.stored is not compressed and x.shape == (37, *image_shape)
    assert source.num_examples("train") == 37 and source.num_examples("test") == 4
    channels = image_shape[2] if len(image_shape) == 3 else 1
    assert source.image_shape("train") == (6, 5, channels)
    for start, stop in [(0, 37), (0, 1), (10, 20), (36, 37), (5, 5)]:
        images, labels = source.read("train", start, stop)
        assert images.dtype == np.uint8 and images.shape == (stop - start, 6, 5, channels)
        np.testing.assert_array_equal(images, data["train"].images[start:stop])
        np.testing.assert_array_equal(labels, data["train"].labels[start:stop])
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(
            source.read_labels("train", start, stop), data["train"].labels[start:stop]
        )
    with pytest.raises(ValueError, match="outside"):
        sources.read_npz_chunk(x, 30, 38)


def test_npz_stored_member_is_memory_mapped_at_its_data(tmp_path):
    # The offset found through the zip's local header points at the array's bytes.
    source_fixtures.write_npz_dataset(tmp_path, num_train=9, num_test=1, compressed=())
    x = sources.read_npz_member(str(tmp_path / "train.npz"), "x")
    with np.load(tmp_path / "train.npz") as f:
        want = f["x"]
    with open(tmp_path / "train.npz", "rb") as f:
        f.seek(x.offset)
        assert f.read(want.nbytes) == want.tobytes()


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.zeros((3, 4, 4), np.uint8)), r"holds no array 'y' \(it holds x\)"),
        (dict(x=np.zeros((3, 4, 4), np.float32), y=np.zeros(3, int)), "x is float32 .*uint8"),
        (dict(x=np.zeros((3, 4), np.uint8), y=np.zeros(3, int)), r"x is uint8 \(3, 4\)"),
        (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.zeros((3, 1), int)), "expected integer"),
        (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(3)), "y is float64"),
        (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(2, int)), "3 images .* but 2 labels"),
        (
            dict(x=np.asfortranarray(np.zeros((3, 4, 4), np.uint8)), y=np.zeros(3, int)),
            "Fortran-ordered",
        ),
        (
            dict(x=np.zeros((3, 4, 4), np.uint8), y=np.array([1, "a", None], object)),
            "Python objects",
        ),
    ],
)
def test_bad_npz_names_the_file(tmp_path, arrays, match):
    path = _savez(tmp_path / "train.npz", **arrays)
    _savez(tmp_path / "test.npz", x=np.zeros((1, 4, 4), np.uint8), y=np.zeros(1, int))
    with pytest.raises(PipelineError, match=f"{path}.*{match}|{match}.*{path}"):
        sources.NpzSource(str(tmp_path)).check()


def test_npz_missing_not_a_zip_and_truncated(tmp_path):
    source = sources.NpzSource(str(tmp_path))
    with pytest.raises(PipelineError, match=f"{tmp_path / 'train.npz'} does not exist"):
        source.check()
    (tmp_path / "train.npz").write_bytes(b"not a zip at all")
    with pytest.raises(PipelineError, match="train.npz: cannot read array 'x'"):
        source.check()
    # A member whose .npy header promises more rows than it holds.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10, 4, 4)}
    )
    with zipfile.ZipFile(tmp_path / "train.npz", "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00"[:0] + header.getvalue() + bytes(5 * 16))
    with pytest.raises(PipelineError, match=r"train.npz: array 'x' is truncated"):
        sources.read_npz_member(str(tmp_path / "train.npz"), "x")


def test_npz_split_names(tmp_path):
    data = source_fixtures.write_npz_dataset(
        tmp_path, num_train=5, num_test=3, stems={"train": "tr", "test": "val"}
    )
    config = data_config(tmp_path, dataset="mine")
    config.source = "npz"
    config.split_names = ml_collections.ConfigDict(dict(train="tr", test="val"))
    source = sources.resolve_source(config)
    assert source.path("test") == str(tmp_path / "val.npz")
    np.testing.assert_array_equal(source.read_labels("test", 0, 3), data["test"].labels)


# ----------------------------------------------------------------------------------
# Image lists


def image_list_source(root, *, max_classes=0, shape=(8, 8, 3)):
    return sources.ImageListSource(
        directory=str(root),
        lists=(
            ("train", "info/train_filelist.txt", ""),
            ("test", "info/val_filelist.txt", "val_images"),
        ),
        shape=shape,
        max_classes=max_classes,
    )


def test_image_list_reads_decodes_and_resizes(tmp_path):
    data = source_fixtures.write_image_list_dataset(tmp_path, num_train=24, num_test=8)
    source = image_list_source(tmp_path)
    source.check()
    assert source.num_examples("train") == 24 and source.num_examples("test") == 8
    assert source.image_shape("train") == (8, 8, 3)
    images, labels = source.read("train", 3, 19)
    assert images.shape == (16, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, data["train"].labels[3:19])
    source_fixtures.assert_images_match(images, data["train"], np.arange(3, 19))
    images, _ = source.read("test", 0, 8)  # paths relative to val_images/
    source_fixtures.assert_images_match(images, data["test"], np.arange(8))
    np.testing.assert_array_equal(source.read_labels("test", 2, 6), data["test"].labels[2:6])
    assert source.labels_origin("test") == str(tmp_path / "info/val_filelist.txt")


def test_image_list_max_classes_keeps_the_first_classes(tmp_path):
    # Labels 0..5; mini-WebVision style selection of labels < 4.
    data = source_fixtures.write_image_list_dataset(
        tmp_path, num_train=30, num_test=6, max_classes=4
    )
    source = image_list_source(tmp_path, max_classes=4)
    assert source.num_examples("train") == 20 == len(data["train"].labels)
    labels = source.read_labels("train", 0, 20)
    np.testing.assert_array_equal(labels, np.tile([0, 1, 2, 3], 5))
    images, _ = source.read("train", 0, 20)
    source_fixtures.assert_images_match(images, data["train"], np.arange(20))


def test_image_list_grayscale_target(tmp_path):
    source_fixtures.write_image_list_dataset(tmp_path, num_train=4, num_test=1)
    images, _ = image_list_source(tmp_path, shape=(8, 8, 1)).read("train", 0, 4)
    assert images.shape == (4, 8, 8, 1)
    # A grayscale file (kind "gray", index 2) reads back as itself.
    gray = np.asarray(Image.open(tmp_path / "train/2/2.png"))
    np.testing.assert_array_equal(images[2, ..., 0], gray)


@pytest.mark.parametrize(
    "line, match",
    [
        ("lonely/path.jpg", r"expected '<relative path> <label>', got 'lonely/path.jpg'"),
        ("a.jpg dog", r"label 'dog' is not a non-negative integer"),
        ("a.jpg -1", r"label '-1' is not a non-negative integer"),
        ("a.jpg 1.5", r"label '1.5'"),
    ],
)
def test_image_list_unparsable_line_names_file_and_line(tmp_path, line, match):
    (tmp_path / "info").mkdir()
    path = tmp_path / "info" / "train_filelist.txt"
    path.write_text(f"a.jpg 0\n\nb.jpg 1\n{line}\nc.jpg 2\n")
    (tmp_path / "info" / "val_filelist.txt").write_text("a.jpg 0\n")
    with pytest.raises(PipelineError, match=f"{path}:4: {match}"):
        image_list_source(tmp_path).check()


def test_image_list_missing_list_file(tmp_path):
    with pytest.raises(PipelineError, match="train_filelist.txt: cannot read the image list"):
        image_list_source(tmp_path).check()


def test_undecodable_or_missing_image_names_the_file(tmp_path):
    source_fixtures.write_image_list_dataset(tmp_path, num_train=8, num_test=1)
    source = image_list_source(tmp_path)
    bad = tmp_path / "train/5/5.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(PipelineError, match=f"{bad}: cannot decode image"):
        source.read("train", 4, 8)
    source.read("train", 0, 4)  # The other chunk is fine.
    truncated = tmp_path / "train/3/3.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(PipelineError, match=f"{truncated}: cannot decode image"):
        source.read("train", 3, 4)
    os.remove(tmp_path / "train/0/0.png")
    with pytest.raises(PipelineError, match=f"{tmp_path / 'train/0/0.png'}: image file not found"):
        source.read("train", 0, 1)


# ----------------------------------------------------------------------------------
# TFDS (mocked: tfds.testing.mock_data with a slice-aware reader)


def test_tfds_source_reads_slices_of_a_mocked_cifar10():
    with tfds_fixtures.mock_tfds({"train": 40, "test": 12}) as fake:
        source = sources.TfdsSource("cifar10")
        source.check()
        assert source.num_examples("train") == 40 and source.num_examples("test") == 12
        assert source.image_shape("train") == (32, 32, 3) and source.num_label_classes() == 10
        images, labels = source.read("train", 7, 19)
        assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        for i in range(12):
            want = fake.example("cifar10", "train", 7 + i)
            np.testing.assert_array_equal(images[i], want["image"])
            assert labels[i] == want["label"]
        np.testing.assert_array_equal(source.read_labels("train", 7, 19), labels)
        assert "train[7:19]" in fake.reads
        test = [fake.example("cifar10", "test", i)["label"] for i in range(12)]
        np.testing.assert_array_equal(source.read_labels("test", 0, 12), test)


def test_tfds_cifar100_coarse_labels():
    with tfds_fixtures.mock_tfds({"train": 30, "test": 5}) as fake:
        source = sources.TfdsSource("cifar100", label_key="coarse_label")
        source.check()
        assert source.num_label_classes() == 20
        assert sources.TfdsSource("cifar100").num_label_classes() == 100
        coarse = [fake.example("cifar100", "train", i)["coarse_label"] for i in range(30)]
        fine = [fake.example("cifar100", "train", i)["label"] for i in range(30)]
        assert coarse != fine
        np.testing.assert_array_equal(source.read_labels("train", 0, 30), coarse)
        np.testing.assert_array_equal(source.read("train", 0, 30)[1], coarse)


def test_tfds_variable_size_images_are_resized():
    # imagenette's images vary in size (the mock draws 5..49 pixels a side).
    with tfds_fixtures.mock_tfds({"train": 6, "validation": 4}) as fake:
        source = sources.TfdsSource(
            "imagenette", split_names=(("test", "validation"),), resize_to=(8, 8, 3)
        )
        source.check()
        assert source.image_shape("test") == (8, 8, 3)
        images, labels = source.read("test", 0, 4)
        assert images.shape == (4, 8, 8, 3)
        for i in range(4):
            raw = fake.example("imagenette", "validation", i)
            want = Image.fromarray(raw["image"]).resize((8, 8), Image.Resampling.BILINEAR)
            np.testing.assert_array_equal(images[i], np.asarray(want))
            assert labels[i] == raw["label"]
        with pytest.raises(
            PipelineError, match=r"have 3 channel\(s\), but config.data.image_shape = \(8, 8, 1\)"
        ):
            sources.TfdsSource("imagenette", resize_to=(8, 8, 1)).image_shape("train")


def test_tfds_bad_keys_and_names():
    with tfds_fixtures.mock_tfds({"train": 3, "test": 3}):
        with pytest.raises(PipelineError, match=r"no feature 'fine'.*label_key.*coarse_label"):
            sources.TfdsSource("cifar100", label_key="fine").check()
        with pytest.raises(PipelineError, match=r"'id' .*label_key.* is not a ClassLabel"):
            sources.TfdsSource("cifar10", label_key="id").check()
        config = data_config(dataset="cifar_11")
        config.source = "tfds"
        config.image_shape = (32, 32, 3)
        with pytest.raises(PipelineError, match=r"TFDS dataset 'cifar_11' .*could not be loaded"):
            sources.resolve_source(config)


def test_tfds_default_mock_without_slices_is_caught():
    # Plain tfds.testing.mock_data ignores slices: every read returns num_examples
    # examples. The source notices instead of writing wrong data.
    import tensorflow_datasets as tfds

    sources._tfds_builder.cache_clear()
    try:
        with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
            with pytest.raises(
                PipelineError, match=r"train\[0:2\] returned 5 examples, expected 2"
            ):
                sources.TfdsSource("mnist").read_labels("train", 0, 2)
    finally:
        sources._tfds_builder.cache_clear()


# ----------------------------------------------------------------------------------
# Source selection


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(source="hdf5"), r"config.data.source = 'hdf5'; expected one of auto, idx, tfds"),
        (dict(source="npz", data_dir=""), r"source = 'npz' needs config.data.data_dir"),
        (dict(source="image_list", data_dir=""), r"'image_list' needs config.data.data_dir"),
        (dict(source="idx", data_dir=""), r"'idx' needs config.data.data_dir or \$HAR_DATA_DIR"),
        (dict(source="auto", dataset="cifar10"), r"unknown dataset 'cifar10'.*source to 'tfds'"),
        (
            dict(source="image_list", image_shape=(8, 8, 4)),
            r"image_shape = \(8, 8, 4\); expected \(H, W, C\) with C 1 or 3",
        ),
        (
            dict(source="image_list", max_classes=60),
            r"image_list.max_classes = 60; expected 0 .*num_classes = 50",
        ),
    ],
)
def test_bad_source_config(tmp_path, monkeypatch, fields, match):
    monkeypatch.delenv(sources.ENV_DATA_DIR, raising=False)
    config = fashion_mnist_hetero.get_config().data
    config.data_dir = str(tmp_path)
    config.num_classes = 50
    for field, value in fields.items():
        if field == "max_classes":
            config.image_list.max_classes = value
        else:
            config[field] = value
    with pytest.raises(PipelineError, match=match):
        sources.resolve_source(config)


def test_explicit_idx_source_has_no_fallback(tmp_path, monkeypatch):
    data = idx_fixtures.write_dataset(tmp_path, num_train=10, num_test=5)
    monkeypatch.delenv(sources.ENV_DATA_DIR, raising=False)
    config = data_config(tmp_path, dataset="kmnist")  # any name: the files decide
    config.source = "idx"
    source = sources.resolve_source(config)
    np.testing.assert_array_equal(source.read_labels("train", 0, 10), data["train"].labels)
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(tmp_path))
    config.data_dir = ""
    assert sources.resolve_source(config).directory == str(tmp_path)


def test_every_source_declares_the_source_protocol():
    """preprocess calls only `sources.Source`'s members, which every source has."""
    every = [
        sources.IdxSource("d"),
        sources.TfdsSource("cifar10"),
        sources.TfdsSource("imdb_reviews", text_key="text"),
        sources.NpzSource("d"),
        sources.ImageListSource("d", (), (8, 8, 3)),
        sources.CsvTextSource("d/x.csv"),
    ]
    for source in every:
        assert isinstance(source, sources.Source), type(source).__name__
    assert [s.modality for s in every] == ["image", "image", "text", "image", "image", "text"]
    assert [s.num_label_classes() for s in every if not isinstance(s, sources.TfdsSource)] == [
        None
    ] * 4
    assert sources.IdxSource("d").split_info() is None
    assert sources.CsvTextSource("d/x.csv").split_info()["test_fraction"] == 0.2
