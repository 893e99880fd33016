"""Offline TFDS datasets for tests: `tfds.testing.mock_data` that honours split slices.

`tfds.testing.mock_data` fakes examples from a builder's features (its code's
metadata: image shape, ClassLabel sizes), so no download or prepared files are
needed. Its default reader ignores split slices ("train[100:200]" yields the same
examples as "train") and, with no metadata files offline (tensorflow_datasets
4.9.10 ships none), has no split sizes. `mock_tfds` replaces the reader through
`mock_data(as_dataset_fn=...)` with one that gives each split a fixed size and
example i of a split the same content in every read, whatever the slice:

  with tfds_fixtures.mock_tfds({"train": 1200, "test": 200}) as fake:
      ...  # pipeline.data.sources.TfdsSource("cifar10") reads fake data
      fake.example("cifar10", "train", 7)  # {"image": ..., "label": ..., ...}
"""

from __future__ import annotations

import contextlib
import re

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from pipeline.data import sources

_SLICE = re.compile(r"(\w+)(?:\[(\d*):(\d*)\])?")
# Per-split seeds of the fake generator, so train and test differ.
_SEEDS = {"train": 0, "test": 1_000_003, "validation": 2_000_003}


class FakeTfds:
    """The fake data: split sizes, and the examples `as_dataset` serves."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = dict(sizes)
        self.reads: list[str] = []  # the split strings asked for, in order
        self._features = {}

    def _generator(self, name: str, split: str):
        return mocking.RandomFakeGenerator(
            self._features[name], num_examples=self.sizes[split], seed=_SEEDS[split]
        )

    def example(self, name: str, split: str, index: int) -> dict:
        """Example `index` of `split` of builder `name` (call inside `mock_tfds`)."""
        if name not in self._features:
            self._features[name] = tfds.builder(name).info.features
        return self._generator(name, split)[index]

    def as_dataset(self, builder, split, decoders=None, read_config=None, **kwargs):
        """Stands in for `FileReaderBuilder._as_dataset`: the slice's fake examples."""
        del decoders, read_config, kwargs  # Images are always decoded.
        self.reads.append(str(split))
        match = _SLICE.fullmatch(str(split))
        if not match or match.group(1) not in self.sizes:
            raise ValueError(f"fake TFDS: unknown split {split!r}")
        name = match.group(1)
        n = self.sizes[name]
        start = min(int(match.group(2) or 0), n)
        stop = min(int(match.group(3) or n), n)
        self._features[builder.name] = builder.info.features
        generator = self._generator(builder.name, name)
        spec = tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.tf_dtype),
            builder.info.features.get_tensor_info(),
        )
        ds = tf.data.Dataset.from_generator(
            lambda: (generator[i] for i in range(start, stop)), output_signature=spec
        )
        return ds.apply(tf.data.experimental.assert_cardinality(stop - start))


@contextlib.contextmanager
def mock_tfds(sizes: dict[str, int]):
    """Mocks TFDS (no network, no files) with splits of the given sizes.

    Clears `pipeline.data.sources`' per-process builder cache on entry and exit, so no
    mocked builder outlives the mock. The in-process Beam runner (FnApiRunner, the
    preprocess default) sees the mock; a multi-process runner would not.
    """
    fake = FakeTfds(sizes)

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        return fake.as_dataset(self, split, decoders, read_config, **kwargs)

    sources._tfds_builder.cache_clear()
    try:
        with tfds.testing.mock_data(
            policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset
        ):
            yield fake
    finally:
        sources._tfds_builder.cache_clear()
