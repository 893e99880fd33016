"""Helpers that write tiny .npz and image-list (WebVision-style) datasets for tests.

from tests.pipeline import source_fixtures
data = source_fixtures.write_npz_dataset(tmp_path, num_train=300, num_test=50)
data["train"].images  # uint8 [300, H, W, C], what train.npz holds
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image


@dataclasses.dataclass
class Split:
    """What was written: uint8 [N, H, W, C] images, int64 [N] labels, and per image
    the largest pixel error a reader may make (0 for lossless files, a few for JPEG)."""

    images: np.ndarray
    labels: np.ndarray
    tolerance: np.ndarray


def write_npz_dataset(
    directory,
    *,
    num_train: int = 300,
    num_test: int = 50,
    num_classes: int = 10,
    image_shape: tuple[int, ...] = (12, 12, 3),
    compressed: tuple[str, ...] = ("test",),
    stems: dict[str, str] | None = None,
    seed: int = 0,
) -> dict[str, Split]:
    """Writes `<stem>.npz` per split with `x` uint8 images and `y` int labels.

    Args:
      image_shape: (H, W) writes x as [N, H, W]; (H, W, C) as [N, H, W, C].
      compressed: splits written with np.savez_compressed (the others np.savez).
      stems: file stem per split (default the split name).

    Returns:
      {"train": Split, "test": Split}; images always [N, H, W, C].
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", num_train), ("test", num_test)):
        x = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        y = rng.integers(0, num_classes, size=n).astype(np.int32)
        path = os.path.join(directory, (stems or {}).get(split, split) + ".npz")
        (np.savez_compressed if split in compressed else np.savez)(path, x=x, y=y)
        images = x if x.ndim == 4 else x[..., np.newaxis]
        out[split] = Split(images, y.astype(np.int64), np.zeros(n, np.int64))
    return out


def _image(kind: str, i: int, shape, rng) -> tuple[Image.Image, np.ndarray, int]:
    """An image file's content, what a reader must return at `shape`, and the tolerance.

    Kinds: "png" random pixels at the target size (exact); "png_big" one colour at
    another size (resizing a constant image gives the same constant: exact); "gray"
    a grayscale PNG (converted to RGB: the value on all three channels); "jpeg" one
    colour (JPEG is lossy: within a few levels).
    """
    height, width, _ = shape
    color = np.array([(37 * i) % 256, (91 * i + 17) % 256, (53 * i + 101) % 256], np.uint8)
    if kind == "png":
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels), pixels, 0
    constant = np.broadcast_to(color, (height, width, 3)).copy()
    if kind == "png_big":
        big = np.broadcast_to(color, (height + 5, width + 2, 3)).copy()
        return Image.fromarray(big), constant, 0
    if kind == "gray":
        gray = np.full((height, width), color[0], np.uint8)
        return Image.fromarray(gray), np.repeat(gray[..., np.newaxis], 3, axis=2), 0
    assert kind == "jpeg", kind
    return Image.fromarray(constant), constant, 3


KINDS = ("png", "png_big", "gray", "jpeg")


def write_image_list_dataset(
    root,
    *,
    num_train: int = 60,
    num_test: int = 12,
    num_labels: int = 6,
    max_classes: int = 0,
    image_shape: tuple[int, int, int] = (8, 8, 3),
    seed: int = 0,
) -> dict[str, Split]:
    """Writes a WebVision-style dataset under `root`.

    Layout: `info/train_filelist.txt` lists `train/<label>/<i>.<ext> <label>` (paths
    relative to root), `info/val_filelist.txt` lists `<i>.<ext> <label>` relative to
    `val_images/`, as WebVision does. Labels cycle through 0..num_labels-1; image
    kinds through `KINDS`. Blank lines are sprinkled in (readers skip them).

    Returns:
      {"train": Split, "test": Split} of the examples a reader keeping labels
      < max_classes (0 = all) must return, in order.
    """
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "info"), exist_ok=True)
    out = {}
    layout = {
        "train": ("info/train_filelist.txt", "", "train/{label}/{i}.{ext}", num_train),
        "test": ("info/val_filelist.txt", "val_images", "{i}.{ext}", num_test),
    }
    for split, (list_file, image_root, pattern, n) in layout.items():
        lines, images, labels, tolerance = [], [], [], []
        for i in range(n):
            label = i % num_labels
            kind = KINDS[i % len(KINDS)]
            img, want, tol = _image(kind, i, image_shape, rng)
            ext = "jpg" if kind == "jpeg" else "png"
            rel = pattern.format(label=label, i=i, ext=ext)
            path = os.path.join(root, image_root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            img.save(path, quality=95) if kind == "jpeg" else img.save(path)
            lines.append(f"{rel} {label}")
            if i % 7 == 3:
                lines.append("")
            if not max_classes or label < max_classes:
                images.append(want)
                labels.append(label)
                tolerance.append(tol)
        with open(os.path.join(root, list_file), "w") as f:
            f.write("\n".join(lines) + "\n")
        out[split] = Split(np.stack(images), np.asarray(labels, np.int64), np.asarray(tolerance))
    return out


def image_list_config(data_config, root, *, max_classes: int = 0) -> None:
    """Points `config.data` at a dataset written by `write_image_list_dataset`."""
    data_config.source = "image_list"
    data_config.data_dir = os.fspath(root)
    lists = data_config.image_list
    lists.train, lists.train_root = "info/train_filelist.txt", ""
    lists.test, lists.test_root = "info/val_filelist.txt", "val_images"
    lists.max_classes = max_classes


def assert_images_match(got: np.ndarray, split: Split, ids: np.ndarray) -> None:
    """Images of examples `ids` equal what was written, within each one's tolerance."""
    want = split.images[ids].astype(np.int64)
    error = np.abs(got.astype(np.int64) - want).reshape(len(ids), -1).max(axis=1, initial=0)
    bad = np.flatnonzero(error > split.tolerance[ids])
    assert not bad.size, f"examples {ids[bad].tolist()} differ by {error[bad].tolist()}"
    assert np.any(split.tolerance[ids] == 0), "no exactly checked image"
