"""`TfdsSource`: any TFDS image-classification (or text) dataset, read by split slices."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from pipeline.core.stage import PipelineError
from pipeline.data.sources.base import SourceDefaults
from pipeline.data.sources.images import check_channels, fit_image


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
class TfdsSource(SourceDefaults):
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
        shape = check_channels(self.resize_to, origin)
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
