import numpy as np
import tensorflow as tf

from pipeline import data


def test_augment_batch_is_a_padded_crop_possibly_flipped():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(64, 6, 5, 2)).astype(np.uint8)
    out = data.augment_batch(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    offsets, flips = set(), 0
    for i in range(len(images)):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if np.array_equal(
                out[i],
                (lambda c: c[:, ::-1] if flip else c)(padded[i, top : top + 6, left : left + 5]),
            )
        ]
        assert matches, f"example {i} is not a crop of its padded image"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 20  # offsets vary per example
    assert 10 < flips < 54  # about half flipped


def test_augment_batch_is_deterministic_given_the_seed():
    images = tf.constant(np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32))
    a = data.augment_batch(images, tf.constant([1, 2], tf.int64))
    b = data.augment_batch(images, tf.constant([1, 2], tf.int64))
    c = data.augment_batch(images, tf.constant([1, 3], tf.int64))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
