"""tf.data input for training and evaluation, from the preprocess stage's records."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from pipeline.core import stage
from pipeline.data import records, text, validation


def load_manifest(workdir: str) -> dict:
    return stage.read_json(os.path.join(stage.require(workdir, "preprocess"), "manifest.json"))


def read_labels(workdir: str, split: str) -> dict[str, np.ndarray]:
    """ids, labels and clean labels of a split as int64 numpy arrays (no images).

    Reads every record of the split once, shard by shard, so it also validates the
    data a stage is about to use: a truncated or corrupt shard (bad length or CRC)
    or a record count that disagrees with manifest.json is a PipelineError naming
    the shard.
    """
    expected = load_manifest(workdir)["splits"][split]["num_examples"]
    out = read_shard_labels(stage.stage_dir(workdir, "preprocess"), split)
    if len(out["id"]) != expected:
        raise stage.PipelineError(
            f"the {split} shards in {stage.stage_dir(workdir, 'preprocess')} hold "
            f"{len(out['id'])} records but manifest.json says {expected}; delete the "
            "directory and rerun preprocess"
        )
    return out


def read_shard_labels(directory: str, split: str) -> dict[str, np.ndarray]:
    """`read_labels` of the shards in `directory`, without the manifest's count check
    (preprocess reads its own shards with it before writing the manifest)."""
    features = records.LABEL_FEATURES
    parts = {k: [] for k in features}
    for path in records.shard_paths(directory, split):
        ds = tf.data.TFRecordDataset(path).batch(4096)
        ds = ds.map(lambda s: tf.io.parse_example(s, features))
        try:
            for batch in ds.as_numpy_iterator():
                for k in features:
                    parts[k].append(batch[k])
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise stage.PipelineError(
                f"{path}: corrupt or truncated TFRecord shard ({e.message.splitlines()[0]}); "
                f"delete {directory} and rerun preprocess"
            ) from None
    return {k: np.concatenate(v) if v else np.zeros([0], np.int64) for k, v in parts.items()}


def read_fit_labels(workdir: str) -> dict[str, np.ndarray]:
    """`read_labels(workdir, "train")` without the validation split's records: the
    examples that pretrain, estimate_tau and train use (pipeline.data.validation)."""
    train = read_labels(workdir, "train")
    held = validation.validation_ids(load_manifest(workdir))
    if not len(held):
        return train
    keep = ~np.isin(train["id"], held)
    return {k: v[keep] for k, v in train.items()}


def fit_keep_ids(workdir: str) -> np.ndarray | None:
    """The train ids a training run may use, or None when there is no validation
    split (then every record: no filter, so the input pipeline is unchanged)."""
    if not len(validation.validation_ids(load_manifest(workdir))):
        return None
    return read_fit_labels(workdir)["id"]


def augment_batch(images: tf.Tensor, seed: tf.Tensor, *, pad: int = 4) -> tf.Tensor:
    """The authors' augmentation on a whole batch: zero-pad `pad`, random crop back
    to size, random horizontal flip; one stateless draw per example.

    Args:
      images: [B, H, W, C] (any dtype; zeros are used for padding).
      seed: int [2] stateless seed for this batch.

    Returns:
      [B, H, W, C], same dtype.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    s_row, s_col, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    top = tf.random.stateless_uniform([b], s_row, 0, 2 * pad + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([b], s_col, 0, 2 * pad + 1, dtype=tf.int32)
    rows = top[:, None] + tf.range(h)[None, :]  # [B, H]
    cols = left[:, None] + tf.range(w)[None, :]  # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2 pad, C]
    out = tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]
    flip = tf.random.stateless_uniform([b], s_flip) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)


def make_dataset(
    workdir: str,
    split: str,
    *,
    batch_size: int,
    training: bool,
    augment: bool = False,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    keep_ids: np.ndarray | None = None,
    with_meta: bool = False,
    drop_remainder: bool = False,
    label_key: str = "label",
) -> tf.data.Dataset:
    """Batches of (input, label int32 [B]).

    The input is, for images, float32 [B, H, W, C] on the 0..255 scale; for text
    (manifest modality "text"), int64 token ids [B, sequence_length] from the
    preprocess stage's vocabulary (`pipeline.data.text.vectorizer`).

    Args:
      training: shuffle (reshuffled each epoch, seeded) and, with `augment`, apply
        the authors' augmentation with stateless per-example seeds. The order and
        the augmentation depend on `seed` only, not on what the process ran before
        (it sets TensorFlow's global seed to `seed`).
      keep_ids: if given, only records whose id is in this int array.
      with_meta: yield (image, label, {"id", "clean_label"}) instead, for analysis.
        The third element is not a sample weight: use only with predict-like loops.
      drop_remainder: drop the last, smaller batch (needed under a multi-replica
        strategy with synchronized BN, which fails on a replica with no example).
      label_key: the label yielded: "label" (the noisy label, what a user has) or
        "clean_label" (a benchmark's ceiling run, pipeline.training.training_set).
    """
    if label_key not in ("label", "clean_label"):
        raise ValueError(f"label_key must be 'label' or 'clean_label', got {label_key!r}")
    manifest = load_manifest(workdir)
    paths = records.shard_paths(stage.stage_dir(workdir, "preprocess"), split)
    ds = tf.data.TFRecordDataset(paths, num_parallel_reads=min(4, len(paths)))
    is_text = manifest.get("modality", "image") == "text"
    if is_text and training and augment:
        raise stage.PipelineError("augment = True is for images; set it False for text")
    ds = ds.map(records.parser_for(manifest), num_parallel_calls=tf.data.AUTOTUNE)
    if keep_ids is not None:
        keys = tf.constant(np.asarray(keep_ids, dtype=np.int64))
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, dtype=tf.int32)), 0
        )
        ds = ds.filter(lambda ex: table.lookup(ex["id"]) > 0)
    if training:
        # tf.data's seeded ops (this shuffle, Dataset.random below) pair `seed` with
        # TensorFlow's global seed, which every model build sets (keras.utils.
        # set_random_seed in modeling.build_har_model). Unset in a fresh process, it was
        # whatever seed the last model built in this process had, so a stage that
        # builds its dataset before its model (pretrain) shuffled otherwise after
        # another job in the same process (a study batch, issue 29) than alone. Set it
        # here: the order is a function of `seed` alone.
        tf.random.set_seed(seed)
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if training and augment:
        # Vectorized per batch (a per-example map costs more than the ResNet step on
        # 2 cores). Seeds are drawn anew each epoch, reproducibly.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda ex, s: {**ex, "image": augment_batch(ex["image"], s)},
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    vectorize = text_vectorizer(workdir, manifest) if is_text else None

    def to_tuple(ex):
        x = vectorize(ex["text"]) if is_text else tf.cast(ex["image"], tf.float32)
        if with_meta:
            return x, ex[label_key], {"id": ex["id"], "clean_label": ex["clean_label"]}
        return x, ex[label_key]

    ds = ds.map(to_tuple, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def text_vectorizer(workdir: str, manifest: dict | None = None):
    """The preprocess stage's vocabulary as a TextVectorization layer (raw -> ids)."""
    manifest = manifest or load_manifest(workdir)
    info = manifest.get("text")
    if info is None:
        raise stage.PipelineError(f"the preprocess output in {workdir} holds no text")
    path = os.path.join(stage.stage_dir(workdir, "preprocess"), info["vocabulary_file"])
    return text.vectorizer(text.read_vocabulary(path), info["sequence_length"])


def raw_texts(workdir: str, split: str, n: int) -> list[bytes]:
    """The raw texts of the first `n` records of a split, in make_dataset's order
    (without shuffling): what a client would send to the exported model."""
    paths = records.shard_paths(stage.stage_dir(workdir, "preprocess"), split)
    ds = tf.data.TFRecordDataset(paths, num_parallel_reads=min(4, len(paths)))
    ds = ds.map(records.text_parser()).take(n)
    return [ex["text"] for ex in ds.as_numpy_iterator()]


def training_dataset(
    workdir: str, section, *, seed: int, keep_ids=None, label_key: str = "label"
) -> tf.data.Dataset:
    """The train split as a training stage's config section asks for it."""
    return make_dataset(
        workdir,
        "train",
        batch_size=section.batch_size,
        training=True,
        augment=section.augment,
        shuffle_buffer=section.shuffle_buffer,
        seed=seed,
        keep_ids=keep_ids,
        drop_remainder=section.strategy != "default",
        label_key=label_key,
    )
