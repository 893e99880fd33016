"""The preprocess stage apart from its Beam graph: the plan and the label decisions.

`make_plan` validates `config.data` and `config.seed`, finds the data and sizes the
splits (driver side, before any Beam work): a `Plan`, small and picklable. The
per-chunk functions below are the numpy work Beam workers run on a chunk's labels:
range checks, noise (`corrupt`), the imbalance cut's candidates, targets,
thresholds and keep mask. `pipeline.preprocess` wires them into the Beam graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from har_tf import checks, corruption
from pipeline.core.stage import PipelineError
from pipeline.data import records, sources


@dataclasses.dataclass(frozen=True)
class Plan:
    """The validated, picklable description of what the Beam job does.

    Attributes:
      source: where examples come from (a `pipeline.data.sources.Source`).
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

    source: sources.Source
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
    source_classes = source.num_label_classes()
    if source_classes is not None and source_classes != num_classes:
        raise PipelineError(
            f"{source.description}: the label feature {data.get('label_key', 'label')!r} "
            f"(config.data.label_key) has {source_classes} classes, but "
            f"config.data.num_classes = {num_classes}"
        )
    modality = source.modality
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
    sizes = _split_sizes(source, data)
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


def _split_sizes(source, data) -> dict[str, int]:
    """Examples used per split (config.data.limit_*), checking the images' shape."""
    limits = {"train": int(data.limit_train), "test": int(data.limit_test)}
    sizes = {}
    for split in records.SPLITS:
        if source.modality == "image":
            shape = tuple(int(d) for d in source.image_shape(split))
            if shape != tuple(int(d) for d in data.image_shape):
                raise PipelineError(
                    f"{source.description}: {split} images have shape {shape}, but "
                    f"config.data.image_shape = {tuple(data.image_shape)}"
                )
        sizes[split] = sources.split_size(source, split, limits[split])
        if sizes[split] == 0:
            raise PipelineError(f"{source.description}: the {split} split has no examples")
    return sizes


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

    One branch per noise kind, each a few lines: it reads better whole.
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
        checks.check_probability(value, name)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"{name} = {value!r}; must be a probability in [0, 1]") from e


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
class Labels:
    """Labels of one chunk: ids, clean, noisy, all int64 [n]."""

    ids: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray


def checked_labels(plan: Plan, split: str, start: int, labels: np.ndarray) -> np.ndarray:
    bad = checks.out_of_range(labels, plan.num_classes)
    if bad.size:
        i = int(bad[0])
        raise PipelineError(
            f"{plan.source.labels_origin(split)}: label {int(labels[i])} at index {start + i} "
            f"is outside [0, {plan.num_classes}) (config.data.num_classes = "
            f"{plan.num_classes}); {bad.size} label(s) in examples [{start}, "
            f"{start + labels.size}) are out of range"
        )
    return labels


def corrupt(plan: Plan, split: str, start: int, clean: np.ndarray) -> Labels:
    clean = checked_labels(plan, split, start, clean)
    ids = np.arange(start, start + clean.size, dtype=np.int64)
    if split == "train":
        noisy = corruption.corrupt_labels(clean, ids, plan.noise_matrix, seed=plan.seed)
    else:
        noisy = clean
    return Labels(ids=ids, clean=clean, noisy=noisy)


def cut_labels(plan: Plan, labels: Labels) -> np.ndarray:
    return labels.noisy if plan.cut_by == "noisy" else labels.clean


def read_labels(chunk: tuple[int, int], plan: Plan, split: str) -> Labels:
    start, stop = chunk
    return corrupt(plan, split, start, plan.source.read_labels(split, start, stop))


def chunk_counts(labels: Labels, plan: Plan) -> np.ndarray:
    return corruption.transition_counts(labels.clean, labels.noisy, plan.num_classes)


def chunk_candidates(labels: Labels, plan: Plan, bounds: np.ndarray):
    """Per cut class c in the chunk: (c, (bound, keys, ids)) of its `bounds[c]` smallest."""
    keys = corruption.imbalance_sort_keys(labels.ids, seed=plan.seed)
    by = cut_labels(plan, labels)
    for c in plan.cut_classes:
        members = np.flatnonzero(by == c)
        bound = int(bounds[c])
        if members.size:
            chosen = members[corruption.smallest_by_key(keys[members], labels.ids[members], bound)]
            yield c, (bound, keys[chosen], labels.ids[chosen])


def cut_targets(counts_before: np.ndarray, plan: Plan) -> np.ndarray:
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


def threshold(item, targets: np.ndarray):
    """(class, sorted candidates) -> (class, (key, id) of the last example kept)."""
    c, (keys, ids) = item
    t = int(targets[c])
    # The candidates are the class's min(bound, count) smallest and t <= both, so
    # the t-th smallest is among them.
    return c, (float(keys[t - 1]), int(ids[t - 1]))


def keep_mask(labels: Labels, plan: Plan, thresholds: dict | None) -> np.ndarray:
    """bool [n]: an example of a cut class is kept iff (key, id) <= its class threshold.

    thresholds: None for a split that is not cut (everything kept). In a cut split
    every cut class with an example has one (`threshold`), so a chunk holding a cut
    class without one got an incomplete side input from its runner: an error, not a
    chunk kept whole."""
    keep = np.ones(labels.ids.size, dtype=bool)
    if thresholds is None:
        return keep
    keys = corruption.imbalance_sort_keys(labels.ids, seed=plan.seed)
    by = cut_labels(plan, labels)
    missing = sorted((set(plan.cut_classes) & set(np.unique(by).tolist())) - set(thresholds))
    if missing:
        raise PipelineError(
            f"the cut's thresholds miss class(es) {missing} of ids {int(labels.ids.min())}-"
            f"{int(labels.ids.max())}: the Beam runner passed an incomplete side input "
            f"(it has classes {sorted(thresholds)}); nothing was written"
        )
    for c, (key, last_id) in thresholds.items():
        members = by == c
        keep[members] = (keys[members] < key) | (
            (keys[members] == key) & (labels.ids[members] <= last_id)
        )
    return keep
