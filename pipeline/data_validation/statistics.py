"""Statistics of the preprocessed splits, as TFX's `DatasetFeatureStatisticsList`.

The preprocess stage's StatisticsGen: what each split's records hold, in the proto
that TFDV and Facets read (`tensorflow_metadata`), so that `tfdv.load_statistics`
and `tfdv.visualize_statistics` open the file elsewhere (docs/DATA_VALIDATION.md).

Two steps, both pure (numpy and protos, no I/O):
  1. `summarize_images` / `summarize_texts`: a `Summary` of one chunk's kept records
     (counts, byte lengths, shapes, dtypes, the pixel-value and token-count
     histograms: integers only), and `merge`, which adds two summaries exactly. The
     Beam job's workers summarize their chunks and a combiner merges them, so the
     statistics are the same whatever the runner, worker count or chunking.
  2. `split_statistics`: a split's merged summary and its C x C transition counts
     (before and after the imbalance cut) -> one `DatasetFeatureStatistics`, with an
     entry per record feature (pipeline/data/records.py).

What each feature's entry holds:
  label, clean_label  INT num_stats: min, max, mean, std, num_zeros and a histogram
                      `class_counts` with one bucket [c, c + 1) per class, the counts
                      after the cut. Custom stat `counts_before_cut`, the same
                      histogram before the imbalance cut (for clean_label: the
                      source's classes, before any corruption); on label,
                      `num_noisy` (records whose label != clean_label).
  id                  INT num_stats: min, max.
  image               BYTES bytes_stats (bytes per record). Custom stats
                      `image_shape` ("H,W,C"; several joined by ";"), `image_dtype`,
                      `pixel_min`, `pixel_max`, `pixel_mean`, `pixel_std` and
                      `pixel_histogram` (16 buckets of 16 levels), over uint8 pixels.
  text                STRING string_stats (avg_length in UTF-8 bytes). Custom stats
                      `token_count_min`, `_max`, `_mean` and `token_count_quantiles`
                      (deciles, a QUANTILES histogram): tokens per text, as
                      pipeline/data/text.py splits them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow_metadata.proto.v0 import statistics_pb2

FEATURE_TYPES = statistics_pb2.FeatureNameStatistics
HISTOGRAM = statistics_pb2.Histogram
PIXEL_LEVELS = 256
PIXEL_BUCKET = 16  # levels per bucket of the pixel histogram written
TOKEN_QUANTILES = 10
CLASS_FEATURES = ("label", "clean_label")


@dataclasses.dataclass(frozen=True)
class Summary:
    """What the statistics need from a set of records; `merge` adds two exactly.

    Attributes:
      num_examples: records summarized.
      id_min, id_max: their smallest and largest id (None when empty).
      bytes_min, bytes_max, bytes_total: bytes of the image / text payload per record.
      shapes: distinct image shapes, "H,W,C" (images only).
      dtypes: distinct image dtypes, numpy names (images only).
      pixel_counts: int64 [256], pixels of each value (uint8 images; None otherwise).
      token_counts: int64 [L + 1], texts of each token count (texts; None otherwise).
    """

    num_examples: int = 0
    id_min: int | None = None
    id_max: int | None = None
    bytes_min: int | None = None
    bytes_max: int | None = None
    bytes_total: int = 0
    shapes: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    pixel_counts: np.ndarray | None = None
    token_counts: np.ndarray | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("pixel_counts", "token_counts"):
            if out[key] is not None:
                out[key] = np.asarray(out[key]).tolist()
        return out

    @classmethod
    def from_json(cls, obj: dict) -> Summary:
        obj = dict(obj)
        for key in ("pixel_counts", "token_counts"):
            if obj[key] is not None:
                obj[key] = np.asarray(obj[key], np.int64)
        obj["shapes"], obj["dtypes"] = tuple(obj["shapes"]), tuple(obj["dtypes"])
        return cls(**obj)


def summarize_images(ids: np.ndarray, images: np.ndarray) -> Summary:
    """Summary of n images [n, H, W, C] with int ids [n]."""
    images = np.asarray(images)
    n = int(images.shape[0])
    if n == 0:
        return Summary()
    per_record = int(images[0].nbytes)
    pixels = None
    if images.dtype == np.uint8:
        pixels = np.bincount(images.reshape(-1), minlength=PIXEL_LEVELS).astype(np.int64)
    return Summary(
        num_examples=n,
        id_min=int(np.min(ids)),
        id_max=int(np.max(ids)),
        bytes_min=per_record,
        bytes_max=per_record,
        bytes_total=per_record * n,
        shapes=(",".join(str(int(d)) for d in images.shape[1:]),),
        dtypes=(images.dtype.name,),
        pixel_counts=pixels,
    )


def summarize_texts(ids: np.ndarray, texts: list[str], token_lengths: np.ndarray) -> Summary:
    """Summary of n texts with int ids [n] and their token counts, int [n]."""
    n = len(texts)
    if n == 0:
        return Summary()
    sizes = np.asarray([len(t.encode("utf-8")) for t in texts], np.int64)
    return Summary(
        num_examples=n,
        id_min=int(np.min(ids)),
        id_max=int(np.max(ids)),
        bytes_min=int(sizes.min()),
        bytes_max=int(sizes.max()),
        bytes_total=int(sizes.sum()),
        token_counts=np.bincount(np.asarray(token_lengths, np.int64)).astype(np.int64),
    )


def _either(fn, a, b):
    return b if a is None else a if b is None else fn(a, b)


def _add_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(max(a.size, b.size), np.int64)
    out[: a.size] += a
    out[: b.size] += b
    return out


def merge(a: Summary, b: Summary) -> Summary:
    """The summary of the union of the records of `a` and `b` (exact: sums, min, max)."""
    return Summary(
        num_examples=a.num_examples + b.num_examples,
        id_min=_either(min, a.id_min, b.id_min),
        id_max=_either(max, a.id_max, b.id_max),
        bytes_min=_either(min, a.bytes_min, b.bytes_min),
        bytes_max=_either(max, a.bytes_max, b.bytes_max),
        bytes_total=a.bytes_total + b.bytes_total,
        shapes=tuple(sorted({*a.shapes, *b.shapes})),
        dtypes=tuple(sorted({*a.dtypes, *b.dtypes})),
        pixel_counts=_either(_add_padded, a.pixel_counts, b.pixel_counts),
        token_counts=_either(_add_padded, a.token_counts, b.token_counts),
    )


# ----------------------------------------------------------------------------------
# Summary -> protos


def _common(common: statistics_pb2.CommonStatistics, n: int) -> None:
    """One value per record, never missing (every record has every feature)."""
    common.num_non_missing = n
    common.num_missing = 0
    common.tot_num_values = n
    if n:
        common.min_num_values = common.max_num_values = 1
        common.avg_num_values = 1.0


def _moments(counts: np.ndarray) -> tuple[float, float]:
    """(mean, std) of a value histogram: counts[v] values equal to v."""
    values = np.arange(counts.size, dtype=np.float64)
    n = counts.sum()
    mean = float((values * counts).sum() / n)
    return mean, float(np.sqrt(((values - mean) ** 2 * counts).sum() / n))


def _range(counts: np.ndarray) -> tuple[int, int]:
    present = np.flatnonzero(counts)
    return int(present[0]), int(present[-1])


def _value_histogram(counts: np.ndarray, name: str, width: int = 1) -> statistics_pb2.Histogram:
    """STANDARD histogram of counts[v] (values v = 0, 1, ...), `width` values a bucket."""
    hist = statistics_pb2.Histogram(type=HISTOGRAM.STANDARD, name=name)
    for low in range(0, counts.size, width):
        hist.buckets.add(
            low_value=low, high_value=low + width, sample_count=int(counts[low : low + width].sum())
        )
    return hist


def _quantiles(counts: np.ndarray, num_buckets: int) -> statistics_pb2.Histogram:
    """QUANTILES histogram of counts[v]: bucket q spans the q-th to (q + 1)-th
    num_buckets-quantile (the value of rank p * (n - 1), 0-based), n / num_buckets each."""
    n = int(counts.sum())
    cumulative = np.cumsum(counts)
    ranks = np.linspace(0.0, 1.0, num_buckets + 1) * (n - 1)
    edges = np.searchsorted(cumulative, ranks, side="right")
    hist = statistics_pb2.Histogram(type=HISTOGRAM.QUANTILES)
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        hist.buckets.add(low_value=int(low), high_value=int(high), sample_count=n / num_buckets)
    return hist


def _class_feature(
    name: str, counts: np.ndarray, before: np.ndarray
) -> statistics_pb2.FeatureNameStatistics:
    feature = statistics_pb2.FeatureNameStatistics(type=FEATURE_TYPES.INT)
    feature.path.step.append(name)
    num = feature.num_stats
    _common(num.common_stats, int(counts.sum()))
    num.num_zeros = int(counts[0])
    if counts.sum():
        num.mean, num.std_dev = _moments(counts)
        num.min, num.max = _range(counts)
    num.histograms.append(_value_histogram(counts, "class_counts"))
    feature.custom_stats.add(
        name="counts_before_cut", histogram=_value_histogram(before, "counts_before_cut")
    )
    return feature


def _id_feature(summary: Summary) -> statistics_pb2.FeatureNameStatistics:
    feature = statistics_pb2.FeatureNameStatistics(type=FEATURE_TYPES.INT)
    feature.path.step.append("id")
    _common(feature.num_stats.common_stats, summary.num_examples)
    if summary.num_examples:
        feature.num_stats.min, feature.num_stats.max = summary.id_min, summary.id_max
    return feature


def _image_feature(summary: Summary) -> statistics_pb2.FeatureNameStatistics:
    feature = statistics_pb2.FeatureNameStatistics(type=FEATURE_TYPES.BYTES)
    feature.path.step.append("image")
    stats = feature.bytes_stats
    _common(stats.common_stats, summary.num_examples)
    if not summary.num_examples:
        return feature
    stats.avg_num_bytes = summary.bytes_total / summary.num_examples
    stats.min_num_bytes, stats.max_num_bytes = summary.bytes_min, summary.bytes_max
    stats.max_num_bytes_int = summary.bytes_max
    feature.custom_stats.add(name="image_shape", str=";".join(summary.shapes))
    feature.custom_stats.add(name="image_dtype", str=";".join(summary.dtypes))
    pixels = summary.pixel_counts
    if pixels is not None and pixels.sum():
        mean, std = _moments(pixels)
        low, high = _range(pixels)
        for stat, value in (("min", low), ("max", high), ("mean", mean), ("std", std)):
            feature.custom_stats.add(name=f"pixel_{stat}", num=value)
        hist = _value_histogram(pixels, "pixel_histogram", PIXEL_BUCKET)
        feature.custom_stats.add(name="pixel_histogram", histogram=hist)
    return feature


def _text_feature(summary: Summary) -> statistics_pb2.FeatureNameStatistics:
    feature = statistics_pb2.FeatureNameStatistics(type=FEATURE_TYPES.STRING)
    feature.path.step.append("text")
    stats = feature.string_stats
    _common(stats.common_stats, summary.num_examples)
    if not summary.num_examples:
        return feature
    stats.avg_length = summary.bytes_total / summary.num_examples
    tokens = summary.token_counts
    mean, _ = _moments(tokens)
    low, high = _range(tokens)
    for stat, value in (("min", low), ("max", high), ("mean", mean)):
        feature.custom_stats.add(name=f"token_count_{stat}", num=value)
    hist = _quantiles(tokens, TOKEN_QUANTILES)
    feature.custom_stats.add(name="token_count_quantiles", histogram=hist)
    return feature


def split_statistics(
    name: str, summary: Summary, before: np.ndarray, after: np.ndarray, modality: str
) -> statistics_pb2.DatasetFeatureStatistics:
    """One split's statistics.

    Args:
      name: the split ("train", "test"), the dataset's name in the proto.
      summary: the merged summary of the split's records.
      before, after: int (C, C) transition counts [clean, noisy] before and after the
        imbalance cut (equal for an uncut split).
      modality: "image" or "text".
    """
    before, after = np.asarray(before, np.int64), np.asarray(after, np.int64)
    out = statistics_pb2.DatasetFeatureStatistics(name=name, num_examples=summary.num_examples)
    payload = _image_feature if modality == "image" else _text_feature
    out.features.extend(
        [
            _id_feature(summary),
            payload(summary),
            _class_feature("label", after.sum(axis=0), before.sum(axis=0)),
            _class_feature("clean_label", after.sum(axis=1), before.sum(axis=1)),
        ]
    )
    label = out.features[2]
    label.custom_stats.add(name="num_noisy", num=int(after.sum() - np.trace(after)))
    return out


# ----------------------------------------------------------------------------------
# Reading the protos back (validation and the manifest's summary)


def feature(dataset: statistics_pb2.DatasetFeatureStatistics, name: str):
    """The FeatureNameStatistics of feature `name` (by path or name); None if absent."""
    for f in dataset.features:
        if (list(f.path.step) or [f.name]) == [name]:
            return f
    return None


def feature_name(f: statistics_pb2.FeatureNameStatistics) -> str:
    return ".".join(f.path.step) or f.name


def custom(f: statistics_pb2.FeatureNameStatistics, name: str):
    """The value of custom stat `name` (num, str or histogram); None if absent."""
    for stat in f.custom_stats:
        if stat.name == name:
            return getattr(stat, stat.WhichOneof("val"))
    return None


def histogram_counts(hist: statistics_pb2.Histogram) -> np.ndarray:
    """int64 [buckets]: the sample counts of a histogram's buckets, in order."""
    return np.asarray([round(b.sample_count) for b in hist.buckets], np.int64)


def class_counts(f: statistics_pb2.FeatureNameStatistics) -> np.ndarray | None:
    """int64 [C]: the `class_counts` histogram of a class feature; None if absent."""
    for hist in f.num_stats.histograms:
        if hist.name == "class_counts":
            return histogram_counts(hist)
    return None


def manifest_summary(statistics: statistics_pb2.DatasetFeatureStatisticsList) -> dict:
    """Per split, the figures a reader checks first (manifest.json's data_validation)."""
    out = {}
    for dataset in statistics.datasets:
        entry = {"num_examples": dataset.num_examples}
        for name in CLASS_FEATURES:
            f = feature(dataset, name)
            if f is not None and f.num_stats.common_stats.num_non_missing:
                entry[f"{name}_range"] = [int(f.num_stats.min), int(f.num_stats.max)]
        image, text = feature(dataset, "image"), feature(dataset, "text")
        if image is not None and custom(image, "image_shape") is not None:
            entry["image_shape"] = custom(image, "image_shape")
            entry["image_dtype"] = custom(image, "image_dtype")
            if custom(image, "pixel_min") is not None:
                entry["pixel_range"] = [custom(image, "pixel_min"), custom(image, "pixel_max")]
                entry["pixel_mean"] = round(custom(image, "pixel_mean"), 3)
        if text is not None and custom(text, "token_count_mean") is not None:
            quantiles = custom(text, "token_count_quantiles").buckets
            entry["tokens_per_text"] = {
                "min": custom(text, "token_count_min"),
                "median": quantiles[TOKEN_QUANTILES // 2].low_value,
                "max": custom(text, "token_count_max"),
                "mean": round(custom(text, "token_count_mean"), 3),
            }
        out[dataset.name] = entry
    return out
