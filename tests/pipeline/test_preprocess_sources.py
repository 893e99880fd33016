"""Full `preprocess` runs on each non-IDX source: .npz, image lists, mocked TFDS.

Each run's records are read back and compared with what the test wrote (pixels,
labels) pushed through the in-memory numpy reference (`corrupt_labels` +
`imbalance_keep_mask`), and each bad input is a PipelineError that leaves no
`<workdir>/preprocess`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from configs import cifar10_hetero, fashion_mnist_hetero
from har_tf import corruption
from pipeline import preprocess
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from tests.pipeline import source_fixtures, tfds_fixtures
from tests.pipeline import test_preprocess as tp


def reference(clean: np.ndarray, matrix: np.ndarray, config, cut=None):
    """(ids, noisy, clean) of the train records: noise, then an optional step cut.

    Args:
      cut: (classes, ratio) of a step cut by noisy label, or None.
    """
    ids = np.arange(clean.size)
    noisy = corruption.corrupt_labels(clean, ids, matrix, seed=config.seed)
    if cut is None:
        return ids, noisy, clean
    classes, ratio = cut
    num_classes = matrix.shape[0]
    targets = corruption.step_imbalance_targets(
        np.bincount(noisy, minlength=num_classes),
        classes,
        ratio,
        n_max=int(np.bincount(clean, minlength=num_classes).max()),
    )
    keep = corruption.imbalance_keep_mask(noisy, ids, targets, seed=config.seed)
    return ids[keep], noisy[keep], clean[keep]


def assert_records(out: str, split: str, shape, want) -> dict:
    got = tp.read_split(out, split, shape)
    ids, noisy, clean = want
    np.testing.assert_array_equal(got["id"], ids)
    np.testing.assert_array_equal(got["label"], noisy)
    np.testing.assert_array_equal(got["clean_label"], clean)
    return got


def assert_fails_cleanly(config, workdir, match) -> None:
    with pytest.raises(PipelineError, match=match):
        preprocess.run(config, str(workdir))
    assert not os.path.exists(os.path.join(workdir, "preprocess"))


# ----------------------------------------------------------------------------------
# .npz


def npz_config(directory, **data):
    config = fashion_mnist_hetero.get_config("smoke")
    config.data.source = "npz"
    config.data.dataset = "random_npz"
    config.data.data_dir = str(directory)
    config.data.image_shape = (12, 12, 3)
    config.data.limit_train = config.data.limit_test = 0
    config.data.chunk_size = 400
    for key, value in data.items():
        config.data[key] = value
    return config


def test_npz_source_through_preprocess(tmp_path):
    # Train saved with np.savez (memory-mapped), test with np.savez_compressed.
    data = source_fixtures.write_npz_dataset(tmp_path / "npz", num_train=1500, num_test=300)
    config = npz_config(tmp_path / "npz")
    config.data.noise.kind = "uniform"
    config.data.noise.rate = 0.2
    config.data.imbalance.ratio = 5.0
    preprocess.run(config, str(tmp_path / "work"))
    out = stage.stage_dir(str(tmp_path / "work"), "preprocess")
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    assert manifest["source"] == str(tmp_path / "npz") and manifest["dataset"] == "random_npz"
    assert manifest["image_shape"] == [12, 12, 3]
    matrix = corruption.uniform_noise_matrix(10, 0.2)
    want = reference(data["train"].labels, matrix, config, cut=((0, 2, 4, 6), 5.0))
    got = assert_records(out, "train", (12, 12, 3), want)
    np.testing.assert_array_equal(got["image"], data["train"].images[got["id"]])
    assert np.any(got["label"] != got["clean_label"])
    test = data["test"]
    got = assert_records(out, "test", (12, 12, 3), (np.arange(300), test.labels, test.labels))
    np.testing.assert_array_equal(got["image"], test.images)


def test_npz_grayscale_and_split_names(tmp_path):
    data = source_fixtures.write_npz_dataset(
        tmp_path / "npz",
        num_train=250,
        num_test=40,
        image_shape=(9, 7),
        stems={"train": "fit", "test": "holdout"},
    )
    config = npz_config(tmp_path / "npz", image_shape=(9, 7, 1))
    config.data.split_names.train, config.data.split_names.test = "fit", "holdout"
    config.data.noise.kind = "none"
    config.data.imbalance.kind = "none"
    preprocess.run(config, str(tmp_path / "work"))
    out = stage.stage_dir(str(tmp_path / "work"), "preprocess")
    for split in ("train", "test"):
        labels = data[split].labels
        got = assert_records(out, split, (9, 7, 1), (np.arange(labels.size), labels, labels))
        np.testing.assert_array_equal(got["image"], data[split].images)


def test_bad_npz_fails_before_any_output(tmp_path):
    source_fixtures.write_npz_dataset(tmp_path / "npz", num_train=20, num_test=5)
    config = npz_config(tmp_path / "npz", image_shape=(12, 12, 1))
    assert_fails_cleanly(config, tmp_path / "w1", r"shape \(12, 12, 3\).*image_shape")
    np.savez(tmp_path / "npz" / "test.npz", x=np.zeros((5, 12, 12, 3), np.uint8))
    config = npz_config(tmp_path / "npz")
    assert_fails_cleanly(config, tmp_path / "w2", r"test.npz holds no array 'y' \(it holds x\)")
    config = npz_config(tmp_path / "nowhere")
    assert_fails_cleanly(config, tmp_path / "w3", "nowhere' is not a directory")


# ----------------------------------------------------------------------------------
# Image lists (WebVision format)


def image_list_config(root, *, max_classes=4, num_classes=4):
    config = fashion_mnist_hetero.get_config("smoke")
    source_fixtures.image_list_config(config.data, root, max_classes=max_classes)
    config.data.dataset = "mini_webvision_like"
    config.data.num_classes = num_classes
    config.data.image_shape = (8, 8, 3)
    config.data.limit_train = config.data.limit_test = 0
    config.data.chunk_size = 15
    config.data.noise.pairs = ((0, 1),)
    config.data.noise.flip_prob = 0.3
    config.data.imbalance.kind = "none"
    return config


def test_image_list_source_through_preprocess(tmp_path):
    # Labels 0..5 in the lists; the "mini" selection keeps labels < 4.
    data = source_fixtures.write_image_list_dataset(
        tmp_path / "wv", num_train=60, num_test=12, max_classes=4
    )
    config = image_list_config(tmp_path / "wv")
    preprocess.run(config, str(tmp_path / "work"))
    out = stage.stage_dir(str(tmp_path / "work"), "preprocess")
    matrix = corruption.pair_swap_matrix(4, ((0, 1),), 0.3)
    got = assert_records(out, "train", (8, 8, 3), reference(data["train"].labels, matrix, config))
    assert got["id"].size == 40 and np.any(got["label"] != got["clean_label"])
    source_fixtures.assert_images_match(got["image"], data["train"], got["id"])
    labels = data["test"].labels
    got = assert_records(out, "test", (8, 8, 3), (np.arange(labels.size), labels, labels))
    source_fixtures.assert_images_match(got["image"], data["test"], got["id"])


def test_image_list_errors_name_the_file_and_leave_no_output(tmp_path):
    root = tmp_path / "wv"
    source_fixtures.write_image_list_dataset(root, num_train=30, num_test=6)
    # Without the mini selection, labels 4 and 5 are outside num_classes = 4 (in
    # both lists: whichever split Beam reads first reports it).
    listing = root / "info" / "train_filelist.txt"
    assert_fails_cleanly(
        image_list_config(root, max_classes=0),
        tmp_path / "w1",
        f"{root}/info/(train|val)_filelist.txt: label 4 at index 4 is outside \\[0, 4\\)",
    )
    # An image that does not decode fails the Beam job, naming the file.
    bad = root / "train" / "1" / "25.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert_fails_cleanly(image_list_config(root), tmp_path / "w2", f"{bad}: cannot decode image")
    # A line that does not parse fails the plan, naming file and line.
    lines = listing.read_text().splitlines()
    lines[6] = "train/0/6.png zero"
    listing.write_text("\n".join(lines) + "\n")
    assert_fails_cleanly(
        image_list_config(root), tmp_path / "w3", f"{listing}:7: label 'zero' is not"
    )


# ----------------------------------------------------------------------------------
# TFDS (mocked cifar10)


@pytest.fixture
def cifar10_config():
    config = cifar10_hetero.get_config("smoke")
    config.data.limit_train = 1200
    config.data.limit_test = 200
    config.data.chunk_size = 500
    return config


def test_mocked_cifar10_through_preprocess(cifar10_config, tmp_path):
    config = cifar10_config
    with tfds_fixtures.mock_tfds({"train": 1300, "test": 250}) as fake:
        preprocess.run(config, str(tmp_path))
        examples = {
            split: [fake.example("cifar10", split, i) for i in range(n)]
            for split, n in (("train", 1200), ("test", 200))
        }
    out = stage.stage_dir(str(tmp_path), "preprocess")
    manifest = stage.read_json(os.path.join(out, "manifest.json"))
    assert manifest["source"] == "tfds:cifar10" and manifest["noise"]["kind"] == "cifar10_hetero"
    images = {s: np.stack([e["image"] for e in ex]) for s, ex in examples.items()}
    labels = {s: np.array([e["label"] for e in ex], np.int64) for s, ex in examples.items()}
    want = reference(
        labels["train"], corruption.cifar10_hetero_matrix(), config, cut=((1, 3, 5, 9), 10.0)
    )
    got = assert_records(out, "train", (32, 32, 3), want)
    np.testing.assert_array_equal(got["image"], images["train"][got["id"]])
    # The paper's pairs: only 1 <-> 9 and 3 <-> 5 moved; those classes were cut.
    moved = got["label"] != got["clean_label"]
    pairs = set(zip(got["clean_label"][moved].tolist(), got["label"][moved].tolist(), strict=True))
    assert pairs == {(1, 9), (9, 1), (3, 5), (5, 3)}
    n_max = np.bincount(labels["train"]).max()
    np.testing.assert_array_equal(np.bincount(got["label"])[[1, 3, 5, 9]], n_max // 10)
    test = (np.arange(200), labels["test"], labels["test"])
    got = assert_records(out, "test", (32, 32, 3), test)
    np.testing.assert_array_equal(got["image"], images["test"])


def test_tfds_label_classes_must_match_num_classes(cifar10_config, tmp_path):
    config = cifar10_config
    config.data.dataset = "cifar100"
    config.data.label_key = "coarse_label"
    config.data.noise.kind = "none"
    with tfds_fixtures.mock_tfds({"train": 20, "test": 5}):
        assert_fails_cleanly(
            config,
            tmp_path,
            r"tfds:cifar100: the label feature 'coarse_label' \(config.data.label_key\) has "
            r"20 classes, but config.data.num_classes = 10",
        )
