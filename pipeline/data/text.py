"""Text: one standardization and vocabulary for preprocess, training and serving.

The `preprocess` stage counts the tokens of the kept train records and writes the
vocabulary (`vocab.txt`, most frequent first) beside the shards, once. Training,
evaluation and the exported SavedModel all turn raw strings into token ids with
`vectorizer(vocabulary, sequence_length)`, a Keras `TextVectorization` layer fed
with that file and with `standardize` applied first, so the ids a served string gets
are the ids it got in training (tests/pipeline/test_text.py checks this).

Standardization (`standardize`): lower case (Unicode), HTML line breaks
(`<br />`, frequent in IMDB reviews) to spaces, ASCII punctuation removed (Keras's
default punctuation set, apostrophes included); tokens are then split on
whitespace. Token ids: 0 is padding, 1 is out-of-vocabulary ("[UNK]"), then the
vocabulary in file order.
"""

from __future__ import annotations

import collections
import os

import keras
import numpy as np
import tensorflow as tf

VOCAB_FILE = "vocab.txt"
# Ids TextVectorization reserves before the vocabulary.
PADDING, OOV = "", "[UNK]"
_BREAK = r"<br\s*/?>"
_PUNCTUATION = r"[!\"#$%&()\*\+,\-\./:;<=>?@\[\\\]^_`{|}~']"


def standardize(texts: tf.Tensor) -> tf.Tensor:
    """Lower case, `<br />` to space, punctuation removed: string tensor -> same shape."""
    texts = tf.strings.lower(texts, encoding="utf-8")
    texts = tf.strings.regex_replace(texts, _BREAK, " ")
    return tf.strings.regex_replace(texts, _PUNCTUATION, "")


def count_tokens(texts) -> collections.Counter:
    """How often each token (a str) occurs in `texts` (str or UTF-8 bytes)."""
    flat = tf.strings.split(standardize(tf.constant(list(texts), tf.string))).flat_values
    values, _, counts = tf.unique_with_counts(flat)
    return collections.Counter(
        {v.decode("utf-8"): int(c) for v, c in zip(values.numpy(), counts.numpy(), strict=True)}
    )


def token_lengths(texts) -> np.ndarray:
    """int64 [n]: how many tokens each of the n `texts` has (the split `count_tokens` uses)."""
    texts = list(texts)
    if not texts:
        return np.zeros([0], np.int64)
    split = tf.strings.split(standardize(tf.constant(texts, tf.string)))
    return split.row_lengths().numpy().astype(np.int64)


def build_vocabulary(counts: dict[str, int], max_tokens: int) -> list[str]:
    """The `max_tokens - 2` most frequent tokens (ties: alphabetical), most frequent first.

    `max_tokens` counts the padding and OOV ids, as TextVectorization's does.
    """
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 (padding, OOV, one token), got {max_tokens}")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[: max_tokens - 2]]


def write_vocabulary(path: str, vocabulary: list[str]) -> None:
    """One token per line, UTF-8 (tokens never hold whitespace)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token in vocabulary)


def read_vocabulary(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no vocabulary file {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def vectorizer(vocabulary: list[str], sequence_length: int) -> keras.layers.TextVectorization:
    """Raw strings [B] -> int64 token ids [B, sequence_length] (0-padded, truncated).

    Reviews longer than `sequence_length` tokens keep their first tokens.
    """
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    if not vocabulary:
        raise ValueError("the vocabulary is empty")
    layer = keras.layers.TextVectorization(
        standardize=standardize,
        split="whitespace",
        output_mode="int",
        output_sequence_length=int(sequence_length),
        vocabulary=np.asarray(vocabulary, dtype=object),
        name="vectorizer",
    )
    layer(tf.constant([""]))  # Built, so that a SavedModel export can track it.
    return layer
