"""What a source is (`Source`, the calls `preprocess` may make) and where data lives.

A source is a small picklable object (it travels to Beam workers). Reads take a
chunk `[start, stop)` of a split's examples in source order, so no worker needs the
whole dataset in memory, and the example id is the index in the source.
"""

from __future__ import annotations

import os
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

ENV_DATA_DIR = "HAR_DATA_DIR"


@runtime_checkable
class Source(Protocol):
    """The calls `preprocess` makes on a source, and nothing else.

    Attributes:
      description: what manifest.json records as the source (a path or a name).
      modality: "image" (`read` gives uint8 [n, H, W, C] images) or "text" (`read`
        gives a list of n strings; `image_shape` is not called).
    """

    description: str
    modality: str

    def check(self) -> None:
        """Raises PipelineError naming the file or field if the source cannot be read."""

    def num_examples(self, split: str) -> int:
        """Examples in `split` ("train" or "test")."""

    def image_shape(self, split: str) -> tuple[int, ...]:
        """(H, W, C) of the split's images (image sources)."""

    def labels_origin(self, split: str) -> str:
        """Where the split's labels come from (a path, for error messages)."""

    def num_label_classes(self) -> int | None:
        """Classes the source declares for its labels (None: it declares none)."""

    def split_info(self) -> dict | None:
        """How the source made its splits, for manifest.json (None: given splits)."""

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        """int64 [stop - start] labels of examples [start, stop)."""

    def read(self, split: str, start: int, stop: int):
        """Examples [start, stop): (images or texts, int64 [n] labels)."""


class SourceDefaults:
    """What most sources share: images, no declared class count, given splits."""

    modality: ClassVar[str] = "image"

    def num_label_classes(self) -> int | None:
        return None

    def split_info(self) -> dict | None:
        return None


def data_dirs(data_config) -> list[tuple[str, str]]:
    """(where it is set, directory) of the explicit data directories, in lookup order:
    `config.data.data_dir`, then `$HAR_DATA_DIR` ("" where unset)."""
    return [
        ("config.data.data_dir", data_config.data_dir),
        (f"${ENV_DATA_DIR}", os.environ.get(ENV_DATA_DIR, "")),
    ]
