"""Helpers that write tiny MNIST-style IDX datasets for tests (raw or gzipped).

from tests.pipeline import idx_fixtures
data = idx_fixtures.write_dataset(tmp_path, num_train=300, num_test=50)
data["train"].images  # uint8 [300, 28, 28], what the files hold
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Iterable

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclasses.dataclass
class Split:
    """What was written for one split: uint8 [N, H, W] images, uint8 [N] labels."""

    images: np.ndarray
    labels: np.ndarray
    images_path: str
    labels_path: str


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x00 0x00 0x08 ndim, dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str, array: np.ndarray, *, truncate: int = 0) -> str:
    """Writes `array` as an IDX file, gzipped if `path` ends in .gz.

    Args:
      truncate: drop this many bytes from the end (to test truncated files).
    """
    data = idx_bytes(array)
    if truncate:
        data = data[:-truncate]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


def write_dataset(
    directory,
    *,
    num_train: int = 300,
    num_test: int = 50,
    num_classes: int = 10,
    image_hw: tuple[int, int] = (28, 28),
    seed: int = 0,
    gzip_splits: Iterable[str] = ("train", "test"),
) -> dict[str, Split]:
    """Writes the four IDX files of a random dataset into `directory`.

    Pixels are uniform random bytes; labels are uniform over the classes.

    Args:
      directory: where to write (created if missing).
      gzip_splits: splits whose files are gzipped (".gz"); the others are raw.

    Returns:
      {"train": Split, "test": Split} holding exactly what was written.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    gzip_splits = set(gzip_splits)
    out = {}
    for split, n in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, size=(n, *image_hw), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n).astype(np.uint8)
        suffix = ".gz" if split in gzip_splits else ""
        image_file, label_file = FILES[split]
        out[split] = Split(
            images=images,
            labels=labels,
            images_path=write_idx(os.path.join(directory, image_file + suffix), images),
            labels_path=write_idx(os.path.join(directory, label_file + suffix), labels),
        )
    return out


def set_label(split: Split, index: int, value: int) -> None:
    """Rewrites a split's label file with labels[index] = value (e.g. out of range)."""
    split.labels[index] = value
    write_idx(split.labels_path, split.labels)
