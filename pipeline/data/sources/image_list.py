"""`ImageListSource`: images listed in text files, one `<path> <label>` per line (WebVision)."""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from pipeline.core.stage import PipelineError
from pipeline.data.sources.base import SourceDefaults
from pipeline.data.sources.images import check_channels, load_image


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
class ImageListSource(SourceDefaults):
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
        check_channels(self.shape, "image list")
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
