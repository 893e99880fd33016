"""MNIST-style IDX files: the format, the datasets known by name, and `IdxSource`."""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib

import numpy as np

from pipeline.core.stage import PipelineError
from pipeline.data.sources.base import SourceDefaults

# IDX file names per split: (images, labels). Each may also be gzipped (".gz").
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_IDX_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset `preprocess` knows how to find.

    Attributes:
      name: the config name (`config.data.dataset`).
      debian_dir: where a Debian package installs its IDX files ("" if none).
      debian_package: that package's name, for error messages.
      tfds_name: the TFDS builder to download when no local files exist.
    """

    name: str
    debian_dir: str
    debian_package: str
    tfds_name: str


DATASETS = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        "/usr/share/datasets/fashion-mnist",
        "dataset-fashion-mnist",
        "fashion_mnist",
    ),
    "mnist": DatasetSpec("mnist", "/usr/share/datasets/mnist", "", "mnist"),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise PipelineError(
            f"unknown dataset {name!r} (config.data.dataset); known: "
            f"{', '.join(sorted(DATASETS))}. For any other dataset set config.data.source "
            "to 'tfds' (a TFDS builder name), 'npz' or 'image_list' (docs/DATA.md)"
        )
    return DATASETS[name]


@dataclasses.dataclass(frozen=True)
class IdxHeader:
    """The parsed header of an IDX file of unsigned bytes.

    Attributes:
      path: the file.
      dims: the dimensions, e.g. (N, 28, 28) for images or (N,) for labels.
      offset: byte offset of the data in the (decompressed) file.
    """

    path: str
    dims: tuple[int, ...]
    offset: int

    @property
    def num_examples(self) -> int:
        return self.dims[0]

    @property
    def example_size(self) -> int:
        return int(np.prod(self.dims[1:], dtype=np.int64))


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx_header(path: str, *, ndim: int) -> IdxHeader:
    """Parses and checks an IDX header (magic number, type, dims, file size).

    Args:
      path: an IDX file, optionally gzipped.
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Raises:
      PipelineError: naming the file on a bad magic number, type, dimension count or
        a file shorter than its header says (for gzip files, shortness is found when
        a chunk is read).
    """
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise PipelineError(f"{path}: not an IDX file (bad magic number {head!r})")
            if head[2] != _IDX_UBYTE:
                raise PipelineError(
                    f"{path}: IDX data type 0x{head[2]:02x}, expected 0x08 (unsigned byte)"
                )
            if head[3] != ndim:
                raise PipelineError(f"{path}: IDX file has {head[3]} dimensions, expected {ndim}")
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise PipelineError(f"{path}: truncated IDX header")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise PipelineError(f"{path}: cannot read IDX header: {e}") from e
    dims = struct.unpack(f">{ndim}I", raw)
    header = IdxHeader(path=path, dims=tuple(int(d) for d in dims), offset=4 + 4 * ndim)
    if not path.endswith(".gz"):
        # A raw file's size is known without reading it, so check it now; a gzipped
        # one would have to be decompressed in full.
        expected = header.offset + header.num_examples * header.example_size
        actual = os.path.getsize(path)
        if actual < expected:
            raise PipelineError(
                f"{path}: truncated IDX file: {actual} bytes, header implies {expected}"
            )
    return header


def read_idx_chunk(header: IdxHeader, start: int, stop: int) -> np.ndarray:
    """Reads examples [start, stop) of an IDX file as uint8 [stop - start, *dims[1:]].

    Only the chunk is held in memory; a gzip file is decompressed up to `stop` (a
    forward seek in gzip decompresses and discards).

    Raises:
      PipelineError: naming the file if it ends before `stop` or is corrupt.
    """
    if not 0 <= start <= stop <= header.num_examples:
        raise ValueError(f"chunk [{start}, {stop}) outside [0, {header.num_examples})")
    size = header.example_size
    want = (stop - start) * size
    try:
        with _open(header.path) as f:
            f.seek(header.offset + start * size)
            data = f.read(want)
    except (OSError, EOFError, zlib.error) as e:
        raise PipelineError(f"{header.path}: cannot read examples [{start}, {stop}): {e}") from e
    if len(data) < want:
        have = start + len(data) // size
        raise PipelineError(
            f"{header.path}: truncated IDX file: header says {header.num_examples} examples, "
            f"data ends after {have}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape((stop - start, *header.dims[1:]))


def find_idx_files(directory: str, split: str) -> tuple[str, str]:
    """Paths of a split's (images, labels) IDX files in `directory`, raw or gzipped.

    Raises:
      PipelineError: naming the directory and the first missing file.
    """
    paths = []
    for base in IDX_FILES[split]:
        for name in (base, base + ".gz"):
            if os.path.isfile(os.path.join(directory, name)):
                paths.append(os.path.join(directory, name))
                break
        else:
            raise PipelineError(f"{directory} holds no {base} (or {base}.gz)")
    return paths[0], paths[1]


@dataclasses.dataclass(frozen=True)
class IdxSource(SourceDefaults):
    """A dataset stored as the four MNIST-style IDX files in one directory."""

    directory: str

    @property
    def description(self) -> str:
        """What manifest.json records as the source."""
        return self.directory

    def check(self) -> None:
        """Checks that every file exists and the headers agree (PipelineError if not)."""
        for split in IDX_FILES:
            self.num_examples(split)
            self.image_shape(split)

    def _headers(self, split: str) -> tuple[IdxHeader, IdxHeader]:
        images_path, labels_path = find_idx_files(self.directory, split)
        images = read_idx_header(images_path, ndim=3)
        labels = read_idx_header(labels_path, ndim=1)
        if images.num_examples != labels.num_examples:
            raise PipelineError(
                f"{images_path} holds {images.num_examples} images but {labels_path} holds "
                f"{labels.num_examples} labels"
            )
        return images, labels

    def num_examples(self, split: str) -> int:
        return self._headers(split)[1].num_examples

    def image_shape(self, split: str) -> tuple[int, int, int]:
        """(H, W, 1): IDX images are single-channel."""
        return (*self._headers(split)[0].dims[1:], 1)

    def labels_origin(self, split: str) -> str:
        """The file the labels of `split` come from (for error messages)."""
        return self._headers(split)[1].path

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        """int64 [stop - start] labels of examples [start, stop)."""
        return read_idx_chunk(self._headers(split)[1], start, stop).astype(np.int64)

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Examples [start, stop): (uint8 [n, H, W, 1] images, int64 [n] labels)."""
        images_header, labels_header = self._headers(split)
        images = read_idx_chunk(images_header, start, stop)[..., np.newaxis]
        labels = read_idx_chunk(labels_header, start, stop).astype(np.int64)
        return images, labels
