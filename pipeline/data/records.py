"""The TFRecord contract between `preprocess` and every later stage.

Each record is a `tf.train.Example` with:
  id           int64   unique example id within its split (the source index)
  image        bytes   raw uint8 pixels, row-major H x W x C (shape in manifest.json),
                       for manifest["modality"] == "image"
  text         bytes   the raw UTF-8 text, for manifest["modality"] == "text"
  label        int64   the training label (noisy for train; clean for test)
  clean_label  int64   the label before corruption

Shards are `<stage dir>/<split>-SSSSS-of-NNNNN.tfrecord` (`shard_name`): shard `s`
holds the records with `id % NNNNN == s`, in ascending id order, so a rerun of the same
config writes byte-identical files. `manifest.json` beside them lists them and records
`image_shape`, `num_classes`, counts and the noise realized.
"""

from __future__ import annotations

import glob
import os
import uuid

import tensorflow as tf

from pipeline.core import stage

SPLITS = ("train", "test")
SUFFIX = ".tfrecord"


def encode(
    example_id: int,
    label: int,
    clean_label: int,
    *,
    image: bytes | None = None,
    text: bytes | None = None,
) -> bytes:
    """Serializes one record (pure protobuf; safe to call in Beam workers).

    Exactly one of `image` (raw pixels) and `text` (UTF-8) is given. Deterministic:
    the same arguments give the same bytes in every process. (By default protobuf
    writes the `features` map in hash order, which differs between processes.)
    """
    if (image is None) == (text is None):
        raise ValueError("a record holds exactly one of image and text")

    def _int(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    payload = ("image", image) if image is not None else ("text", text)
    feature = {
        "id": _int(example_id),
        payload[0]: tf.train.Feature(bytes_list=tf.train.BytesList(value=[payload[1]])),
        "label": _int(label),
        "clean_label": _int(clean_label),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


LABEL_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "clean_label": tf.io.FixedLenFeature([], tf.int64),
}
FEATURES = {**LABEL_FEATURES, "image": tf.io.FixedLenFeature([], tf.string)}
TEXT_FEATURES = {**LABEL_FEATURES, "text": tf.io.FixedLenFeature([], tf.string)}
MODALITIES = ("image", "text")


def parser(image_shape):
    """Returns a tf.data map fn: serialized Example -> dict with a uint8 `image`."""
    image_shape = tuple(int(d) for d in image_shape)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, FEATURES)
        image = tf.io.decode_raw(ex["image"], tf.uint8)
        ex["image"] = tf.reshape(image, image_shape)
        ex["label"] = tf.cast(ex["label"], tf.int32)
        ex["clean_label"] = tf.cast(ex["clean_label"], tf.int32)
        return ex

    return parse


def text_parser():
    """Returns a tf.data map fn: serialized Example -> dict with a string `text`."""

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, TEXT_FEATURES)
        ex["label"] = tf.cast(ex["label"], tf.int32)
        ex["clean_label"] = tf.cast(ex["clean_label"], tf.int32)
        return ex

    return parse


def parser_for(manifest: dict):
    """The parser of a preprocess output, by its manifest's modality."""
    if manifest.get("modality", "image") == "text":
        return text_parser()
    return parser(manifest["image_shape"])


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`<split>-SSSSS-of-NNNNN.tfrecord`, the file name of shard `index` of `split`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}{SUFFIX}"


def write_shard(path: str, serialized) -> None:
    """Writes serialized records to the TFRecord file `path`, in the order given.

    The records go to a temporary file beside `path` (a hidden name that
    `shard_paths` does not match), renamed to `path` once complete, so `path` never
    holds part of a shard. No records gives an empty file.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized:
                writer.write(record)
        stage.replace_durably(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def shard_paths(stage_dir: str, split: str) -> list[str]:
    """Sorted shard files of a split; raises FileNotFoundError if there are none."""
    paths = sorted(glob.glob(os.path.join(stage_dir, f"{split}-*-of-*{SUFFIX}")))
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {stage_dir}")
    return paths
