"""Tests of pipeline.sources: the IDX reader and where data is looked for."""

from __future__ import annotations

import gzip

import ml_collections
import numpy as np
import pytest

from pipeline import sources
from pipeline.stage import PipelineError
from tests.pipeline import idx_fixtures


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

    def offline(name):
        calls.append(name)
        raise OSError("no network")

    monkeypatch.setattr(sources, "_tfds_builder", offline)
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
