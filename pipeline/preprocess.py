r"""Stage `preprocess`: source images -> corrupted, cut, sharded TFRecords (Apache Beam).

  python -m pipeline.preprocess --config=configs/fashion_mnist_hetero.py \
      --workdir=runs/fm [--beam_args="--direct_num_workers=2 \
      --direct_running_mode=multi_processing"]

Train split: each example's noisy label is drawn from the row of its clean label in
the noise transition matrix (`config.data.noise`: pairs, groups, the paper's
presets, uniform, asymmetric or a given matrix), then an imbalance
(`config.data.imbalance`: step, long_tailed or counts) keeps, in each cut class,
the `target` examples with the smallest `(imbalance_sort_keys(id), id)`. Test
split: written as is (label == clean_label). Every random choice is a hash of
(config.seed, id) (see `har_tf.corruption`), so the output is the same set of
records whatever the runner, worker count or chunking, and equals the in-memory
reference `corrupt_labels` + `imbalance_keep_mask`. The files are deterministic too: shard `s`
of a split holds the records with `id % num_shards == s`, sorted by id, so two runs
of the same config write byte-identical shards (see `_WriteShard`).

The Beam graph, per split; examples are read in chunks of `config.data.chunk_size`
and processed as numpy arrays:

  chunk ranges -> labels pass (labels file only): noisy labels, sort keys
      -> counts before the cut (C x C transition counts, summed)  -> targets
      -> per cut class c, the `bound[c]` smallest (key, id) (a vectorized top-k
         combiner; `bound[c]` >= any target c can get, `Plan.candidate_bounds`)
      -> the target-th smallest = the class's keep threshold     -> side input
  chunk ranges -> write pass (images + labels, threshold side input): noisy labels,
      keep mask, encoded records batched by shard (id % num_shards)
      -> GroupByKey(shard) -> sort by id, write the shard file; kept C x C counts (summed)
  counts, targets -> a small JSON per split, folded into manifest.json afterwards.

Runner: `--runner=FnApiRunner` by default, Beam's in-process batch runner. Beam's
plain "DirectRunner" first tries the Prism runner, which downloads a binary (no
network here, and a surprise anywhere; offline it falls back to the FnApiRunner).
Anything in `--beam_args` overrides it: `--direct_num_workers=2
--direct_running_mode=multi_processing` runs the FnApiRunner with 2 worker
processes; `--runner=DaskRunner --dask_client_address=tcp://HOST:PORT` runs on a
dask.distributed cluster (`pipeline.dask_runner`). docs/DATA.md, "Runners", has
these and the Dataflow, Flink and Spark options.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import logging as py_logging
import os
import re
import shlex

import apache_beam as beam
import numpy as np
from absl import app, flags, logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from har_tf import corruption
from pipeline import data, records, sources, stage, text, validation
from pipeline.stage import PipelineError

STAGE = "preprocess"
MANIFEST = "manifest.json"
DEFAULT_BEAM_ARGS = ("--runner=FnApiRunner",)
_DASK_RUNNER = "pipeline.dask_runner.DaskRunner"
_DASK_RUNNER_NAMES = ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")
_STATS_FILE = "_stats-{split}.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The validated, picklable description of what the Beam job does.

    Attributes:
      source: where examples come from (a `pipeline.sources` source).
      num_classes: C.
      image_shape: (H, W, channels) of the source images.
      seed: `config.seed`, for the noise draw and the cut order.
      noise_matrix: float64 (C, C) `T[clean, noisy]` applied to train (identity for
        kind "none").
      imbalance_kind: "none", "step", "long_tailed" or "counts".
      cut_classes: classes the imbalance may cut (empty for kind "none"; every class
        for "long_tailed" and "counts").
      ratio: the imbalance ratio n_max / n_rare ("step", "long_tailed").
      class_counts: examples to keep per class ("counts"; empty otherwise).
      cut_by: "noisy" or "clean": the labels the cut counts and selects by.
      sizes: examples used per split (after `limit_*`).
      chunk_size: examples per read chunk.
      num_shards: shards per split.
      modality: "image" or "text" (the source's; `image_shape` is () for text).
      max_tokens: for text, the vocabulary size (padding and OOV included).
    """

    source: object
    num_classes: int
    image_shape: tuple[int, ...]
    seed: int
    noise_matrix: np.ndarray
    imbalance_kind: str
    cut_classes: tuple[int, ...]
    ratio: float
    class_counts: tuple[int, ...]
    cut_by: str
    sizes: dict
    chunk_size: int
    num_shards: int
    modality: str = "image"
    max_tokens: int = 0

    def imbalance_targets(self, counts: np.ndarray, n_max: int) -> np.ndarray:
        """int64 [C] examples to keep per class, given int [C] counts before the cut.

        The same `har_tf.corruption` functions the in-memory reference uses; n_max is
        the source's largest class before noise.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if self.imbalance_kind == "step":
            return corruption.step_imbalance_targets(
                counts, self.cut_classes, self.ratio, n_max=n_max
            )
        if self.imbalance_kind == "long_tailed":
            return corruption.long_tailed_targets(counts, self.ratio, n_max=n_max)
        if self.imbalance_kind == "counts":
            return corruption.count_targets(counts, self.class_counts)
        return counts

    def candidate_bounds(self, split: str) -> np.ndarray:
        """int64 [C]: an upper bound on each class's cut target in `split`.

        Every kind's target is non-decreasing in both the class count and n_max, and
        both are at most n, the split's size; so the targets for counts = n_max = n
        bound the real ones.
        """
        n = self.sizes[split]
        return self.imbalance_targets(np.full(self.num_classes, n, np.int64), n)


# ----------------------------------------------------------------------------------
# Planning (driver side, before any Beam work)


def make_plan(config) -> Plan:
    """Validates `config.data` / `config.seed` and finds the data.

    Raises:
      PipelineError: for anything a user must fix in the config or the data.
    """
    data = config.data
    sources.check_source_config(data)  # Bad names fail before any file lookup.
    num_classes = int(data.num_classes)
    if num_classes < 2:
        raise PipelineError(f"config.data.num_classes must be >= 2, got {num_classes}")
    seed = int(config.seed)
    if seed < 0:
        raise PipelineError(f"config.seed must be >= 0, got {seed}")
    for field in ("num_shards", "chunk_size"):
        if int(data[field]) < 1:
            raise PipelineError(f"config.data.{field} must be >= 1, got {data[field]}")

    matrix = noise_matrix(data.noise, num_classes)
    imbalance = data.imbalance
    kind, cut_classes, ratio, class_counts = _imbalance_fields(imbalance, num_classes)
    if imbalance.by not in ("noisy", "clean"):
        raise PipelineError(
            f"config.data.imbalance.by = {imbalance.by!r}; expected 'noisy' or 'clean'"
        )

    source = sources.resolve_source(data)
    source_classes = getattr(source, "num_label_classes", lambda: None)()
    if source_classes is not None and source_classes != num_classes:
        raise PipelineError(
            f"{source.description}: the label feature {data.get('label_key', 'label')!r} "
            f"(config.data.label_key) has {source_classes} classes, but "
            f"config.data.num_classes = {num_classes}"
        )
    modality = getattr(source, "modality", "image")
    max_tokens = 0
    if modality == "text":
        max_tokens = int(data.text.max_tokens)
        if max_tokens < 3:
            raise PipelineError(
                f"config.data.text.max_tokens = {max_tokens}; needs >= 3 (padding, "
                "out-of-vocabulary and at least one token)"
            )
        if int(data.text.sequence_length) < 1:
            raise PipelineError(
                f"config.data.text.sequence_length must be >= 1, got {data.text.sequence_length}"
            )
    limits = {"train": int(data.limit_train), "test": int(data.limit_test)}
    sizes = {}
    for split in records.SPLITS:
        shape = () if modality == "text" else tuple(int(d) for d in source.image_shape(split))
        if modality == "image" and shape != tuple(int(d) for d in data.image_shape):
            raise PipelineError(
                f"{source.description}: {split} images have shape {shape}, but "
                f"config.data.image_shape = {tuple(data.image_shape)}"
            )
        sizes[split] = sources.split_size(source, split, limits[split])
        if sizes[split] == 0:
            raise PipelineError(f"{source.description}: the {split} split has no examples")
    return Plan(
        source=source,
        num_classes=num_classes,
        image_shape=() if modality == "text" else tuple(int(d) for d in data.image_shape),
        seed=seed,
        noise_matrix=matrix,
        imbalance_kind=kind,
        cut_classes=cut_classes,
        ratio=ratio,
        class_counts=class_counts,
        cut_by=imbalance.by,
        sizes=sizes,
        chunk_size=int(data.chunk_size),
        num_shards=int(data.num_shards),
        modality=modality,
        max_tokens=max_tokens,
    )


NOISE_KINDS = (
    "none",
    "pairs",
    "groups",
    "cifar10_hetero",
    "cifar100_superclass",
    "uniform",
    "asymmetric",
    "matrix",
)
IMBALANCE_KINDS = ("none", "step", "long_tailed", "counts")


def noise_matrix(noise, num_classes: int) -> np.ndarray:
    """The (C, C) transition matrix `config.data.noise` asks for.

    Args:
      noise: `config.data.noise` (reads `kind` and that kind's fields, see
        configs/common.py).
      num_classes: C.

    Returns:
      float64 (C, C) `T[clean, noisy]`, rows summing to 1.

    Raises:
      PipelineError: naming the field for an unknown kind, a preset used with the
        wrong number of classes, or a field the kind's matrix rejects.
    """
    kind = noise.kind
    if kind not in NOISE_KINDS:
        raise PipelineError(
            f"config.data.noise.kind = {kind!r}; expected one of {', '.join(NOISE_KINDS)}"
        )
    presets = {"cifar10_hetero": 10, "cifar100_superclass": 100}
    if kind in presets and num_classes != presets[kind]:
        raise PipelineError(
            f"config.data.noise.kind = {kind!r} needs config.data.num_classes = "
            f"{presets[kind]}, got {num_classes}"
        )

    def build(fn, *names):
        # Errors name the field: the builders' messages start with the argument's
        # name where it is not obvious (e.g. "rates[2] must be in [0, 1]"); any other
        # error is about the last, structural field (flip_prob is checked first).
        try:
            return fn(*(noise[n] for n in names))
        except (ValueError, TypeError) as e:
            field = next((n for n in names if str(e).startswith(n)), names[-1])
            raise PipelineError(f"config.data.noise.{field}: {e}") from e

    if kind in ("pairs", "groups", "cifar10_hetero", "cifar100_superclass"):
        _check_probability(noise.flip_prob, "config.data.noise.flip_prob")
    if kind == "none":
        return np.eye(num_classes)
    if kind == "pairs":
        return build(
            lambda p, pairs: corruption.pair_swap_matrix(num_classes, pairs, p),
            "flip_prob",
            "pairs",
        )
    if kind == "groups":
        return build(
            lambda p, groups: corruption.group_flip_matrix(num_classes, groups, p),
            "flip_prob",
            "groups",
        )
    if kind == "cifar10_hetero":
        return corruption.cifar10_hetero_matrix(float(noise.flip_prob))
    if kind == "cifar100_superclass":
        return corruption.cifar100_superclass_matrix(float(noise.flip_prob))
    if kind == "uniform":
        _check_probability(noise.rate, "config.data.noise.rate")
        return corruption.uniform_noise_matrix(num_classes, float(noise.rate))
    if kind == "asymmetric":
        if len(noise.rates) != num_classes:
            raise PipelineError(
                f"config.data.noise.rates has {len(noise.rates)} entries; kind 'asymmetric' "
                f"needs one flip rate per class (config.data.num_classes = {num_classes})"
            )
        return build(
            lambda rates, targets: corruption.asymmetric_noise_matrix(num_classes, rates, targets),
            "rates",
            "targets",
        )
    return build(
        lambda m: corruption.validate_transition_matrix(m, num_classes=num_classes), "matrix"
    )


def _check_probability(value, name: str) -> None:
    try:
        ok = 0.0 <= float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PipelineError(f"{name} = {value!r}; must be a probability in [0, 1]")


def _imbalance_fields(imbalance, num_classes: int):
    """Validated (kind, cut_classes, ratio, class_counts) of `config.data.imbalance`."""
    kind = imbalance.kind
    if kind not in IMBALANCE_KINDS:
        raise PipelineError(
            f"config.data.imbalance.kind = {kind!r}; expected one of {', '.join(IMBALANCE_KINDS)}"
        )
    dummy = np.ones(num_classes, np.int64)
    if kind == "none":
        return kind, (), 1.0, ()
    if kind == "counts":
        counts = tuple(imbalance.counts)
        try:
            corruption.count_targets(dummy, counts)
        except (ValueError, TypeError) as e:
            raise PipelineError(f"config.data.imbalance.counts: {e}") from e
        for c, n in enumerate(counts):
            if n == 0:
                raise PipelineError(
                    f"config.data.imbalance.counts[{c}] = 0 would leave class {c} empty"
                )
        return kind, tuple(range(num_classes)), 1.0, tuple(int(n) for n in counts)
    try:
        ratio = float(imbalance.ratio)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"config.data.imbalance.ratio: {e}") from e
    if kind == "long_tailed":
        try:
            corruption.long_tailed_targets(dummy, ratio)
        except ValueError as e:
            raise PipelineError(f"config.data.imbalance.ratio: {e}") from e
        return kind, tuple(range(num_classes)), ratio, ()
    try:  # Checks classes and ratio on dummy counts.
        cut_classes = tuple(int(c) for c in imbalance.classes)
        corruption.step_imbalance_targets(dummy, cut_classes, ratio)
    except (ValueError, TypeError) as e:
        field = "ratio" if "ratio" in str(e) else "classes"
        raise PipelineError(f"config.data.imbalance.{field}: {e}") from e
    return kind, cut_classes, ratio, ()


# ----------------------------------------------------------------------------------
# Per-chunk numpy work (runs in Beam workers)


@dataclasses.dataclass
class _Labels:
    """Labels of one chunk: ids, clean, noisy, all int64 [n]."""

    ids: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray


def _checked_labels(plan: Plan, split: str, start: int, labels: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels >= plan.num_classes))
    if bad.size:
        i = int(bad[0])
        raise PipelineError(
            f"{plan.source.labels_origin(split)}: label {int(labels[i])} at index {start + i} "
            f"is outside [0, {plan.num_classes}) (config.data.num_classes = "
            f"{plan.num_classes}); {bad.size} label(s) in examples [{start}, "
            f"{start + labels.size}) are out of range"
        )
    return labels


def _corrupt(plan: Plan, split: str, start: int, clean: np.ndarray) -> _Labels:
    clean = _checked_labels(plan, split, start, clean)
    ids = np.arange(start, start + clean.size, dtype=np.int64)
    if split == "train":
        noisy = corruption.corrupt_labels(clean, ids, plan.noise_matrix, seed=plan.seed)
    else:
        noisy = clean
    return _Labels(ids=ids, clean=clean, noisy=noisy)


def _by(plan: Plan, labels: _Labels) -> np.ndarray:
    return labels.noisy if plan.cut_by == "noisy" else labels.clean


def _read_labels(chunk: tuple[int, int], plan: Plan, split: str) -> _Labels:
    start, stop = chunk
    return _corrupt(plan, split, start, plan.source.read_labels(split, start, stop))


def _chunk_counts(labels: _Labels, plan: Plan) -> np.ndarray:
    return corruption.transition_counts(labels.clean, labels.noisy, plan.num_classes)


def _chunk_candidates(labels: _Labels, plan: Plan, bounds: np.ndarray):
    """Per cut class c in the chunk: (c, (bound, keys, ids)) of its `bounds[c]` smallest."""
    keys = corruption.imbalance_sort_keys(labels.ids, seed=plan.seed)
    by = _by(plan, labels)
    for c in plan.cut_classes:
        members = np.flatnonzero(by == c)
        bound = int(bounds[c])
        if members.size:
            chosen = members[corruption.smallest_by_key(keys[members], labels.ids[members], bound)]
            yield c, (bound, keys[chosen], labels.ids[chosen])


class _SumCounts(beam.CombineFn):
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


class _SmallestByKey(beam.CombineFn):
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


def _targets(counts_before: np.ndarray, plan: Plan) -> np.ndarray:
    """int64 [C] per-class targets of the cut (the full count for uncut classes)."""
    axis = 0 if plan.cut_by == "noisy" else 1  # noisy = column sums, clean = row sums
    counts = counts_before.sum(axis=axis)
    # n_max is the largest class of the source before noise (the authors' img_max),
    # whichever label the cut goes by: 6000 / 10 = 600 on Fashion-MNIST.
    n_max = int(counts_before.sum(axis=1).max(initial=0))
    targets = plan.imbalance_targets(counts, n_max)
    # What each class would keep had it enough examples (for the messages below).
    wanted = plan.imbalance_targets(np.full_like(counts, 2**62), n_max)
    for c in plan.cut_classes:
        if targets[c] == 0:
            if plan.imbalance_kind == "step":
                rule = f"floor({n_max} / {plan.ratio:g}) = {wanted[c]}"
            elif plan.imbalance_kind == "long_tailed":
                rule = (
                    f"floor({n_max} * {plan.ratio:g} ** (-{c} / {plan.num_classes - 1})) "
                    f"= {wanted[c]}"
                )
            else:
                rule = f"config.data.imbalance.counts[{c}] = {wanted[c]}"
            fix = (
                "lower config.data.imbalance.ratio or use more data"
                if wanted[c] == 0
                else "no example of it is left to keep (check the noise and num_classes)"
            )
            raise PipelineError(
                f"the {plan.imbalance_kind} imbalance leaves class {c} empty: it has "
                f"{counts[c]} examples by {plan.cut_by} label and the cut target is {rule}; " + fix
            )
        if plan.imbalance_kind == "counts" and counts[c] < wanted[c]:
            logging.warning(
                "imbalance counts: class %d has %d examples by %s label, fewer than the "
                "%d asked for; keeping all of them.",
                c,
                counts[c],
                plan.cut_by,
                wanted[c],
            )
    return targets


def _threshold(item, targets: np.ndarray):
    """(class, sorted candidates) -> (class, (key, id) of the last example kept)."""
    c, (keys, ids) = item
    t = int(targets[c])
    # The candidates are the class's min(bound, count) smallest and t <= both, so
    # the t-th smallest is among them.
    return c, (float(keys[t - 1]), int(ids[t - 1]))


def _keep_mask(labels: _Labels, plan: Plan, thresholds: dict) -> np.ndarray:
    """bool [n]: an example of a cut class is kept iff (key, id) <= its class threshold."""
    keep = np.ones(labels.ids.size, dtype=bool)
    if not thresholds:
        return keep
    keys = corruption.imbalance_sort_keys(labels.ids, seed=plan.seed)
    by = _by(plan, labels)
    for c, (key, last_id) in thresholds.items():
        members = by == c
        keep[members] = (keys[members] < key) | (
            (keys[members] == key) & (labels.ids[members] <= last_id)
        )
    return keep


class _EncodeChunk(beam.DoFn):
    """Reads a chunk, corrupts and cuts it; emits encoded records and kept counts.

    Main output: one `(shard, (ids, records))` per shard of the split, `ids` the
    kept example ids with `id % num_shards == shard` (ascending) and `records` their
    serialized Examples. Every shard gets an element, empty or not, so each shard
    reaches `_WriteShard` and is written even if it holds no record. For text, the
    train split also emits the token counts of its kept records (output TOKENS), from
    which the vocabulary is built.
    """

    COUNTS = "counts"
    TOKENS = "tokens"

    def __init__(self, plan: Plan, split: str):
        self._plan = plan
        self._split = split

    def process(self, chunk, thresholds=None):
        plan = self._plan
        start, stop = chunk
        inputs, clean = plan.source.read(self._split, start, stop)
        labels = _corrupt(plan, self._split, start, clean)
        keep = _keep_mask(labels, plan, thresholds or {})
        kept = np.flatnonzero(keep)
        ids = labels.ids[kept]
        if plan.modality == "text":
            payloads = [{"text": t.encode("utf-8")} for t in inputs]
            if self._split == "train":
                kept_texts = [inputs[i] for i in kept.tolist()]
                counts = text.count_tokens(kept_texts) if kept_texts else {}
                yield beam.pvalue.TaggedOutput(self.TOKENS, dict(counts))
        else:
            flat = inputs.reshape(inputs.shape[0], -1)
            payloads = [{"image": row.tobytes()} for row in flat]
        encoded = [
            records.encode(example_id, label, clean_label, **payloads[i])
            for i, example_id, label, clean_label in zip(
                kept.tolist(),
                ids.tolist(),
                labels.noisy[kept].tolist(),
                labels.clean[kept].tolist(),
                strict=True,
            )
        ]
        shard_of = ids % plan.num_shards
        for shard in range(plan.num_shards):
            members = np.flatnonzero(shard_of == shard)
            yield shard, (ids[members].tolist(), [encoded[i] for i in members.tolist()])
        counts = corruption.transition_counts(
            labels.clean[kept], labels.noisy[kept], plan.num_classes
        )
        yield beam.pvalue.TaggedOutput(self.COUNTS, counts)


class _WriteShard(beam.DoFn):
    """Writes one shard file from its grouped `(ids, records)` batches.

    The records are sorted by id and written to `<split>-SSSSS-of-NNNNN.tfrecord`
    in `out_dir` through a temporary file renamed once complete
    (`records.write_shard`); a shard with no records is an empty file. So the bytes
    of a shard depend only on the config and the data, not on the runner, the
    worker count, the chunking or the order in which chunks finish.

    Memory: the GroupByKey hands all of a shard's records to one call, so a worker
    holds about N / num_shards records at once, N the records kept in the split
    (Fashion-MNIST train, 4 shards: ~9.6k records, ~8.4 MB; at most 60k / 4 = 15k).
    Fine at this scale; for bigger data raise `config.data.num_shards`.
    """

    def __init__(self, out_dir: str, split: str, num_shards: int):
        self._out_dir = out_dir
        self._split = split
        self._num_shards = num_shards

    def process(self, item):
        shard, batches = item
        ids, encoded = [], []
        for batch_ids, batch_records in batches:
            ids.extend(batch_ids)
            encoded.extend(batch_records)
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        name = records.shard_name(self._split, shard, self._num_shards)
        records.write_shard(os.path.join(self._out_dir, name), (encoded[i] for i in order))
        yield name


class _SumTokenCounts(beam.CombineFn):
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


def _write_vocabulary(counts: dict, path: str, max_tokens: int) -> None:
    text.write_vocabulary(path, text.build_vocabulary(counts, max_tokens))


def _write_stats(_, path: str, *, before, after, targets) -> None:
    stats = {
        "transition_counts_before_cut": np.asarray(before).tolist(),
        "transition_counts": np.asarray(after).tolist(),
        "targets": None if targets is None else np.asarray(targets).tolist(),
    }
    with open(path, "w") as f:
        json.dump(stats, f)


# ----------------------------------------------------------------------------------
# The Beam graph


def _chunks(p, plan: Plan, split: str):
    n, size = plan.sizes[split], plan.chunk_size
    ranges = [(s, min(s + size, n)) for s in range(0, n, size)]
    # Reshuffle so a multi-worker runner spreads the chunks instead of reading them
    # all in the worker that created the list.
    return p | f"{split}/Chunks" >> beam.Create(ranges) | f"{split}/Spread" >> beam.Reshuffle()


def _build_split(p, plan: Plan, split: str, out_dir: str) -> None:
    C = plan.num_classes
    chunks = _chunks(p, plan, split)
    cut = split == "train" and bool(plan.cut_classes)
    if split == "train":
        labels = chunks | f"{split}/ReadLabels" >> beam.Map(_read_labels, plan, split)
        before = (
            labels
            | f"{split}/ChunkCounts" >> beam.Map(_chunk_counts, plan)
            | f"{split}/CountsBeforeCut" >> beam.CombineGlobally(_SumCounts(C))
        )
    if cut:
        bounds = plan.candidate_bounds(split)
        targets = before | f"{split}/Targets" >> beam.Map(_targets, plan)
        thresholds = (
            labels
            | f"{split}/Candidates" >> beam.FlatMap(_chunk_candidates, plan, bounds)
            | f"{split}/SmallestPerClass" >> beam.CombinePerKey(_SmallestByKey())
            | f"{split}/Thresholds" >> beam.Map(_threshold, beam.pvalue.AsSingleton(targets))
        )
        encode = beam.ParDo(_EncodeChunk(plan, split), thresholds=beam.pvalue.AsDict(thresholds))
    else:
        targets = None
        encode = beam.ParDo(_EncodeChunk(plan, split))
    encoded = chunks | f"{split}/Encode" >> encode.with_outputs(
        _EncodeChunk.COUNTS, _EncodeChunk.TOKENS, main="records"
    )
    if plan.modality == "text" and split == "train":
        _ = (
            encoded[_EncodeChunk.TOKENS]
            | f"{split}/TokenCounts" >> beam.CombineGlobally(_SumTokenCounts())
            | f"{split}/Vocabulary"
            >> beam.Map(_write_vocabulary, os.path.join(out_dir, text.VOCAB_FILE), plan.max_tokens)
        )
    _ = (
        encoded.records
        | f"{split}/GroupByShard" >> beam.GroupByKey()
        | f"{split}/WriteShards" >> beam.ParDo(_WriteShard(out_dir, split, plan.num_shards))
    )
    after = encoded[_EncodeChunk.COUNTS] | f"{split}/CountsAfterCut" >> beam.CombineGlobally(
        _SumCounts(C)
    )
    if split != "train":
        before = after

    def side(pcoll):
        return None if pcoll is None else beam.pvalue.AsSingleton(pcoll)

    _ = (
        p
        | f"{split}/Once" >> beam.Create([None])
        | f"{split}/Stats"
        >> beam.Map(
            _write_stats,
            os.path.join(out_dir, _STATS_FILE.format(split=split)),
            before=side(before),
            after=side(after),
            targets=side(targets),
        )
    )


def pipeline_options(beam_args=()) -> PipelineOptions:
    """Default options (the in-process FnApiRunner) overridden by `beam_args`.

    `--runner=DaskRunner` (or Beam's class path for it) becomes
    `pipeline.dask_runner.DaskRunner`, which fixes two faults of Beam 2.77's that
    lose this job's outputs (see that module). A runner given by its class path has
    its module imported first: that defines the runner's own options
    (`--dask_client_address`), which Beam would otherwise only learn of when it
    creates the runner, after this check.

    Raises:
      PipelineError: for an option no Beam options class knows (Beam would otherwise
        drop it with a warning), or a runner module that cannot be imported.
    """
    options = PipelineOptions([*DEFAULT_BEAM_ARGS, *beam_args])
    runner = options.view_as(StandardOptions).runner
    if runner in _DASK_RUNNER_NAMES:
        runner = options.view_as(StandardOptions).runner = _DASK_RUNNER
    if "." in runner:
        module = runner.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise PipelineError(f"--runner={runner}: cannot import {module}: {e}") from e
    known = options.get_all_options()
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(known)
    if unknown:
        names = ", ".join(f"--{name}" for name in sorted(unknown))
        raise PipelineError(f"unknown Beam option(s) in --beam_args: {names}")
    return options


def _run_beam(plan: Plan, out_dir: str, beam_args) -> None:
    options = pipeline_options(beam_args)
    logging.info("Beam options: %s", options.get_all_options(drop_default=True))
    p = beam.Pipeline(options=options)
    for split in records.SPLITS:
        _build_split(p, plan, split, out_dir)
    quiet = _DropPipelineErrors()
    for name in _BEAM_ERROR_LOGGERS:
        py_logging.getLogger(name).addFilter(quiet)
    try:
        p.run().wait_until_finish()
    except PipelineError as e:
        # In-process runners re-raise our error with " [while running 'step']" added.
        raise PipelineError(_STEP_SUFFIX.sub("", str(e))) from None
    except Exception as e:
        # Out-of-process workers report errors as text: recover ours from it.
        match = re.search(r"PipelineError: (.+)", str(e))
        if match:
            raise PipelineError(_STEP_SUFFIX.sub("", match.group(1))) from e
        raise
    finally:
        for name in _BEAM_ERROR_LOGGERS:
            py_logging.getLogger(name).removeFilter(quiet)


# Beam logs a failing bundle's traceback here before re-raising the error.
_BEAM_ERROR_LOGGERS = ("apache_beam.runners.worker.bundle_processor", "apache_beam.runners.common")
_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


class _DropPipelineErrors(py_logging.Filter):
    """Drops Beam's log of a PipelineError: the stage reports it once, plainly."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, PipelineError)


# ----------------------------------------------------------------------------------
# Manifest


def _split_entry(stats: dict, plan: Plan, split: str, out_dir: str) -> dict:
    before = np.asarray(stats["transition_counts_before_cut"], np.int64)
    after = np.asarray(stats["transition_counts"], np.int64)
    shards = [os.path.basename(p) for p in records.shard_paths(out_dir, split)]
    expected = [records.shard_name(split, s, plan.num_shards) for s in range(plan.num_shards)]
    if shards != expected:
        raise PipelineError(f"expected the {split} shards {expected}, found {shards}")
    return {
        "num_source_examples": plan.sizes[split],
        "num_examples": int(after.sum()),
        "counts_before_cut": {
            "clean": before.sum(axis=1).tolist(),
            "noisy": before.sum(axis=0).tolist(),
        },
        "counts_after_cut": {
            "noisy": after.sum(axis=0).tolist(),
            "clean": after.sum(axis=1).tolist(),
        },
        "transition_counts_before_cut": before.tolist(),
        "transition_counts": after.tolist(),
        "transition_rates": corruption.row_normalize(after).tolist(),
        "shards": shards,
    }


def _manifest(config, plan: Plan, out_dir: str) -> dict:
    splits = {}
    targets = None
    for split in records.SPLITS:
        path = os.path.join(out_dir, _STATS_FILE.format(split=split))
        stats = stage.read_json(path)
        os.remove(path)
        splits[split] = _split_entry(stats, plan, split, out_dir)
        if split == "train":
            targets = stats["targets"]
    manifest = {
        "dataset": config.data.dataset,
        "source": plan.source.description,
        "modality": plan.modality,
        "seed": plan.seed,
        "num_classes": plan.num_classes,
        "image_shape": list(plan.image_shape),
        "noise": {
            **config.data.noise.to_dict(),
            "transition_matrix": plan.noise_matrix.tolist(),
        },
        "imbalance": {**config.data.imbalance.to_dict(), "targets": targets},
        "splits": splits,
    }
    if hasattr(plan.source, "split_info"):
        manifest["test_split"] = plan.source.split_info()
    if plan.modality == "text":
        vocabulary = text.read_vocabulary(os.path.join(out_dir, text.VOCAB_FILE))
        if not vocabulary:
            raise PipelineError("the kept train texts hold no token: the vocabulary is empty")
        manifest["text"] = {
            "vocabulary_file": text.VOCAB_FILE,
            "vocabulary_size": len(vocabulary),
            "max_tokens": plan.max_tokens,
            "sequence_length": int(config.data.text.sequence_length),
            "standardize": "lower, <br /> to space, ASCII punctuation removed",
        }
    return manifest


# ----------------------------------------------------------------------------------
# Entry points


def run(config, workdir: str, beam_args=()) -> None:
    """Runs the stage: writes `<workdir>/preprocess/` (shards + manifest.json).

    Args:
      config: the experiment config (reads `config.data` and `config.seed`).
      workdir: the pipeline's working directory.
      beam_args: extra Beam pipeline options, e.g. ["--direct_num_workers=2"].

    Raises:
      PipelineError: on a config or data problem; `<workdir>/preprocess` is then not
        created.
    """
    plan = make_plan(config)
    val_fraction = validation.checked_fraction(config.data)
    logging.info(
        "preprocess: %s from %s, %s examples, noise %s, imbalance %s",
        config.data.dataset,
        plan.source.description,
        plan.sizes,
        config.data.noise.kind,
        config.data.imbalance.kind,
    )
    section = {"seed": plan.seed, "data": config.data.to_dict()}
    with stage.stage_output(workdir, STAGE, config=section) as out_dir:
        _run_beam(plan, out_dir, list(beam_args))
        manifest = _manifest(config, plan, out_dir)
        if val_fraction:
            train = data.read_shard_labels(out_dir, "train")
            manifest["validation"] = validation.manifest_entry(
                train["id"], train["label"], fraction=val_fraction, seed=plan.seed,
                num_classes=plan.num_classes,
            )  # fmt: skip
        stage.write_json(os.path.join(out_dir, MANIFEST), manifest)
        train = manifest["splits"]["train"]
        logging.info(
            "preprocess: train %d -> %d examples; per class after the cut (noisy): %s",
            train["num_source_examples"],
            train["num_examples"],
            train["counts_after_cut"]["noisy"],
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    # Beam's INFO log names every fused stage; keep warnings and errors only.
    py_logging.getLogger("apache_beam").setLevel(py_logging.WARNING)
    beam_args = shlex.split(FLAGS.beam_args)
    stage.run_main(
        STAGE, lambda config, workdir: run(config, workdir, beam_args), FLAGS.config, FLAGS.workdir
    )


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy, so Beam pickles the
    # DoFns by reference to `pipeline.preprocess` (workers import it by that name).
    from pipeline import cli, preprocess

    cli.define_common_flags()
    flags.DEFINE_string(
        "beam_args", "", "Extra Beam pipeline options, e.g. '--direct_num_workers=2'."
    )
    app.run(preprocess.main)
