"""The Beam combiners of the preprocess stage (pipeline/preprocess.py's graph).

Each merges per-chunk partial results exactly (sums, top-k, set unions), so the
stage's outputs do not depend on how a runner groups the chunks.
"""

from __future__ import annotations

import collections
import functools

import apache_beam as beam
import numpy as np

from har_tf import corruption
from pipeline.data_validation import statistics


class SumCounts(beam.CombineFn):
    """Sums int64 (C, C) count matrices; the empty sum is zeros."""

    def __init__(self, num_classes: int):
        self._num_classes = num_classes

    def create_accumulator(self):
        return np.zeros((self._num_classes, self._num_classes), np.int64)

    def add_input(self, acc, counts):
        return acc + counts

    def merge_accumulators(self, accs):
        return sum(accs, self.create_accumulator())

    def extract_output(self, acc):
        return acc


class SmallestByKey(beam.CombineFn):
    """Top-k by smallest (key, id) over chunks of (k, keys float64 [n], ids int64 [n]).

    A vectorized stand-in for `beam.combiners.Top.Smallest(k)` on (key, id) pairs:
    merging per-chunk top-k lists and trimming to k is exact. Each input carries its
    class's k (every input of a key has the same one), since a CombineFn applied per
    key does not see the key.
    """

    def create_accumulator(self):
        return 0, np.zeros([0], np.float64), np.zeros([0], np.int64)

    @staticmethod
    def _trim(k, keys, ids):
        chosen = corruption.smallest_by_key(keys, ids, k)
        return k, keys[chosen], ids[chosen]

    def add_input(self, acc, chunk):
        return self.merge_accumulators([acc, chunk])

    def merge_accumulators(self, accs):
        accs = list(accs)
        return self._trim(
            max(a[0] for a in accs),
            np.concatenate([a[1] for a in accs]),
            np.concatenate([a[2] for a in accs]),
        )

    def extract_output(self, acc):
        _, keys, ids = self._trim(*acc)
        return keys, ids  # Sorted ascending.


class MergeSummaries(beam.CombineFn):
    """Merges `data_statistics.Summary`s (exactly); the empty merge is an empty summary."""

    def create_accumulator(self):
        return statistics.Summary()

    def add_input(self, acc, summary):
        return statistics.merge(acc, summary)

    def merge_accumulators(self, accs):
        return functools.reduce(statistics.merge, accs, statistics.Summary())

    def extract_output(self, acc):
        return acc


class SumTokenCounts(beam.CombineFn):
    """Sums {token: count} dicts (the vocabulary's counts over all kept train texts)."""

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, acc, counts):
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs):
        total = collections.Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc):
        return dict(acc)
