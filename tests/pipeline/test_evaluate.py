"""The evaluate stage: metrics against hand-computed values, plots, and a whole run."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipeline import evaluate
from pipeline.core import stage
from pipeline.data import datasets
from pipeline.evaluation import blessing, plots
from pipeline.evaluation import report as evaluate_report
from pipeline.training import epoch_eval, modeling
from tests.pipeline import workdir_fixtures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, path
    # IHDR width and height are positive.
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width > 100 and height > 100


# Three classes, six examples.
LABELS = np.array([0, 0, 1, 1, 2, 2])
LOGITS = np.array(
    [
        [3.0, 2.0, 1.0],  # pred 0, correct
        [1.0, 3.0, 2.0],  # pred 1, label 0 second-to-last
        [0.0, 5.0, 1.0],  # pred 1, correct
        [4.0, 0.0, 1.0],  # pred 0, label 1 last
        [1.0, 2.0, 3.0],  # pred 2, correct
        [2.0, 1.0, 0.0],  # pred 0, label 2 last
    ]
)
PREDS = LOGITS.argmax(axis=1)


def test_accuracies_by_hand():
    acc = evaluate.accuracies(LABELS, PREDS, 3, {"a": (0, 1), "b": (2,)})
    assert acc["overall"] == pytest.approx(3 / 6)
    assert acc["per_class"] == pytest.approx([1 / 2, 1 / 2, 1 / 2])
    assert acc["groups"] == pytest.approx({"a": 2 / 4, "b": 1 / 2})
    assert acc["num_examples"] == 6


def test_per_class_accuracy_of_a_missing_class_is_nan():
    acc = evaluate.accuracies([0, 0], [0, 1], 2, {"g": (1,)})
    assert acc["per_class"][0] == 0.5 and np.isnan(acc["per_class"][1])
    assert np.isnan(acc["groups"]["g"])


def test_top_k_by_hand():
    assert evaluate.top_k_accuracy(LABELS, LOGITS, 1) == pytest.approx(3 / 6)
    # Top-2 sets of the misses: example 1 {1, 2} (label 0 out), example 3 {0, 2}
    # (label 1 out), example 5 {0, 1} (label 2 out). So top-2 = top-1 here.
    assert evaluate.top_k_accuracy(LABELS, LOGITS, 2) == pytest.approx(3 / 6)
    # k >= C: every label is in the top k.
    assert evaluate.top_k_accuracy(LABELS, LOGITS, 5) == 1.0
    # Example 1 with scores (2.5, 3, 2): label 0 now second.
    logits = LOGITS.copy()
    logits[1] = [2.5, 3.0, 2.0]
    assert evaluate.top_k_accuracy(LABELS, logits, 2) == pytest.approx(4 / 6)


def test_confusion_matrix_rows_are_true_classes():
    cm = evaluate.confusion_matrix(LABELS, PREDS, 3)
    expected = np.array(
        [
            [1, 1, 0],  # true 0: predicted 0, 1
            [1, 1, 0],  # true 1: predicted 1, 0
            [1, 0, 1],  # true 2: predicted 2, 0
        ]
    )
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(LABELS, minlength=3))
    # The diagonal over the row sums is the per-class accuracy.
    acc = evaluate.accuracies(LABELS, PREDS, 3, {})
    np.testing.assert_allclose(np.diag(cm) / cm.sum(axis=1), acc["per_class"])


def _history(test_accuracy, per_class):
    """A history.json with per-epoch test metrics: per_class is [epochs][C]."""
    per_class = np.asarray(per_class, float)
    return {
        "loss": [1.0] * len(test_accuracy),
        epoch_eval.TEST_ACCURACY: list(test_accuracy),
        epoch_eval.TEST_TOP5: [0.9 + e / 100 for e in range(len(test_accuracy))],
        **{epoch_eval.class_accuracy_key(c): per_class[:, c].tolist() for c in range(6)},
    }


def test_best_epoch_by_hand():
    # Six classes; test counts 10, 30, 20, 40, 0 (class 4: no test example, so no
    # key in a real history), 50. Epochs 2 and 3 tie on test accuracy: epoch 2 wins.
    counts = [10, 30, 20, 40, 0, 50]
    per_class = [
        [0.1, 0.1, 0.1, 0.1, 0.0, 0.1],
        [0.5, 0.2, 0.4, 0.9, 0.0, 0.6],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    history = _history([0.1, 0.7, 0.7], per_class)
    del history[epoch_eval.class_accuracy_key(4)]
    groups = {"a": (0, 1), "b": (2, 3, 4), "empty": (4,), "all": tuple(range(6))}
    best = evaluate.best_epoch(history, counts, groups)
    assert best["epoch"] == 2 and best["selected_on"] == "test set"
    assert best["top1"] == 0.7 and best["top5"] == 0.91
    np.testing.assert_array_equal(best["per_class"], [0.5, 0.2, 0.4, 0.9, np.nan, 0.6])
    # Accuracy over the group's examples: correct counts over example counts.
    assert best["groups"]["a"] == pytest.approx((5 + 6) / 40)
    assert best["groups"]["b"] == pytest.approx((8 + 36) / 60)
    assert np.isnan(best["groups"]["empty"])
    assert best["groups"]["all"] == pytest.approx((5 + 6 + 8 + 36 + 30) / 150)


def test_best_epoch_has_no_top5_with_at_most_five_classes():
    history = {epoch_eval.TEST_ACCURACY: [0.5], epoch_eval.class_accuracy_key(0): [0.5]}
    best = evaluate.best_epoch(history, [4, 0], {})
    assert best["top5"] is None and best["per_class"][0] == 0.5


def test_best_epoch_names_a_missing_class_key():
    history = _history([0.5], [[0.5] * 6])
    del history[epoch_eval.class_accuracy_key(3)]
    with pytest.raises(stage.PipelineError, match="class 3 has 7 test examples .*test_class_3"):
        evaluate.best_epoch(history, [1, 1, 1, 7, 1, 1], {})


def test_true_noise_rates_from_manifest():
    manifest = {"splits": {"train": {"transition_rates": [[0.6, 0.4], [0.1, 0.9]]}}}
    assert evaluate.true_noise_rates(manifest) == pytest.approx([0.4, 0.1])


def test_rare_classes():
    assert evaluate.rare_classes({"kind": "step", "classes": (4, 0)}, 5) == [0, 4]
    assert evaluate.rare_classes({"kind": "none", "classes": (1,)}, 5) == []
    assert evaluate.rare_classes({"kind": "long_tailed", "targets": [9, 9, 3, 1]}, 4) == [2, 3]


def test_example_categories_are_exclusive():
    labels = np.array([0, 1, 2, 3, 0])
    clean = np.array([0, 1, 3, 2, 2])
    cats = evaluate.example_categories(labels, clean, rare=[0, 3])
    assert cats.tolist() == ["rare", "clean", "noisy", "noisy", "noisy"]
    # Cut by the clean label: example 0's clean label 0 is rare; example 1 is not.
    cats = evaluate.example_categories(labels, clean, rare=[1], by="clean")
    assert cats.tolist() == ["clean", "rare", "noisy", "noisy", "noisy"]


def test_cross_entropy_by_hand():
    logits = np.array([[0.0, 0.0], [1000.0, 0.0]])
    losses = evaluate.cross_entropy(logits, [1, 1])
    np.testing.assert_allclose(losses, [np.log(2.0), 1000.0])


def test_loss_summary():
    s = evaluate.loss_summary([1.0, 3.0, 2.0], np.array(["clean", "clean", "noisy"], object))
    assert s["clean"] == {"n": 2, "mean": 2.0, "median": 2.0}
    assert s["noisy"]["n"] == 1 and s["noisy"]["mean"] == 2.0
    assert s["rare"]["n"] == 0 and np.isnan(s["rare"]["mean"])


def test_plots_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    plots.error_vs_strength(
        {
            "erm": {"strength": [0.0] * 3, "error": [0.1, 0.5, float("nan")]},
            "har": {"strength": [1.0, 10.0, 3.0], "error": [0.1, 0.3, 0.2]},
        },
        str(tmp_path / "a.png"),
    )
    plots.loss_histograms(
        {
            "erm": {"clean": rng.random(50), "noisy": rng.random(10) + 2, "rare": []},
            "har": {"clean": rng.random(50), "noisy": rng.random(10), "rare": rng.random(5)},
        },
        str(tmp_path / "b.png"),
    )
    plots.training_curves(
        {"erm": {"loss": [2.0, 1.0], "accuracy": [0.3, 0.6]}, "har": {"loss": [2.5, 1.1]}},
        str(tmp_path / "c.png"),
    )
    for name in "abc":
        assert_png(tmp_path / f"{name}.png")


# ----------------------------------------------------------------------------------
# The stage on a real (tiny) workdir: preprocess, then untrained models as "runs".


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("work"))
    idx_dir = str(tmp_path_factory.mktemp("idx"))
    config = workdir_fixtures.make_workdir(idx_dir, workdir)
    return config, workdir, idx_dir


@pytest.fixture(scope="module")
def evaluated(prepared):
    config, workdir, _ = prepared
    evaluate.run(config, workdir)
    return config, workdir, stage.stage_dir(workdir, "evaluate")


@pytest.fixture(scope="module")
def evaluated_without_per_epoch_test(prepared, tmp_path_factory):
    """The same inputs, evaluated with config.eval.per_epoch_test = False."""
    _, workdir, idx_dir = prepared
    copy = str(tmp_path_factory.mktemp("no_per_epoch_test"))
    for name in ("preprocess", "estimate_tau", "train"):
        shutil.copytree(stage.stage_dir(workdir, name), stage.stage_dir(copy, name))
    config = workdir_fixtures.tiny_config(idx_dir)
    config.eval.per_epoch_test = False
    evaluate.run(config, copy)
    return stage.stage_dir(copy, "evaluate")


def test_stage_report_numbers(evaluated):
    config, workdir, out = evaluated
    report = stage.read_json(os.path.join(out, "report.json"))
    manifest = stage.read_json(os.path.join(workdir, "preprocess", "manifest.json"))
    assert list(report["runs"]) == ["erm", "har"]
    assert report["rare_classes"] == [0, 2, 4, 6]
    rates = manifest["splits"]["train"]["transition_rates"]
    assert report["tau"]["true_noise_rate"] == pytest.approx([1 - rates[c][c] for c in range(10)])
    # The pairs noise flips classes 0, 6, 2, 4 only.
    assert all(report["tau"]["true_noise_rate"][c] == 0 for c in (1, 3, 5, 7, 8, 9))
    for r in report["runs"].values():
        t = r["test"]
        cm = np.array(t["confusion"])
        assert cm.shape == (10, 10) and cm.sum() == t["num_examples"] == 100
        assert np.trace(cm) / cm.sum() == pytest.approx(t["overall"])
        assert t["overall"] <= t["top5"] <= 1.0
        counts = r["train_losses"]
        assert sum(c["n"] for c in counts.values()) == manifest["splits"]["train"]["num_examples"]
        # Training metrics only: the per-epoch test metrics are not training figures.
        assert r["final_train"] == {"loss": 2.0, "reg": r["lam"] / 20}
    assert report["runs"]["erm"]["strength"] == [0.0] * 10
    assert report["runs"]["har"]["strength"] == pytest.approx(10 * workdir_fixtures.TAU)


def test_stage_best_epoch_from_the_history(evaluated):
    # workdir_fixtures.TEST_HISTORY: epoch 1 has the higher test accuracy, and class c
    # has accuracy c / 10 there.
    config, workdir, out = evaluated
    report = stage.read_json(os.path.join(out, "report.json"))
    assert report["per_epoch_test"] is True
    test = datasets.make_dataset(workdir, "test", batch_size=100, training=False)
    counts = np.bincount(np.concatenate([y.numpy() for _, y in test]), minlength=10)
    assert counts.sum() == 100
    per_class = np.arange(10) / 10
    for r in report["runs"].values():
        best = r["best_epoch"]
        assert best["epoch"] == 1 and best["selected_on"] == "test set"
        assert best["top1"] == 0.6 and best["top5"] == 0.9
        assert best["per_class"] == pytest.approx(per_class)
        for g, classes in config.eval.groups.items():
            c = list(classes)
            expected = (per_class[c] * counts[c]).sum() / counts[c].sum()
            assert best["groups"][g] == pytest.approx(expected), g
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert evaluate_report.BEST_EPOCH_TITLE in md
    assert "| run | best epoch | noisy_rare | clean | overall | top-5 |" in md
    noisy_rare = report["runs"]["har"]["best_epoch"]["groups"]["noisy_rare"]
    assert f"| har | 1 | {100 * noisy_rare:.1f} |" in md
    assert "accuracy at best epoch 1 (%) |" in md


def test_stage_without_per_epoch_test_says_so(evaluated_without_per_epoch_test):
    out = evaluated_without_per_epoch_test
    report = stage.read_json(os.path.join(out, "report.json"))
    assert report["per_epoch_test"] is False
    assert all(r["best_epoch"] is None for r in report["runs"].values())
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert evaluate_report.BEST_EPOCH_TITLE in md and evaluate_report.BEST_EPOCH_UNAVAILABLE in md
    assert "| run | best epoch |" not in md and "accuracy at best epoch" not in md
    assert "| run | noisy_rare | clean | overall | top-5 | lambda |" in md


def test_stage_writes_plots_referenced_by_the_report(evaluated):
    _, _, out = evaluated
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert "| run | noisy_rare | clean | overall | top-5 | lambda |" in md
    assert "true noise rate" in md and "Confusion matrix" in md
    for png in evaluate.PLOTS.values():
        assert f"]({png})" in md
        assert_png(os.path.join(out, png))


def test_stage_writes_each_runs_blessing(evaluated):
    """blessing.json per run, from report.json's numbers by hand: the smoke config's
    HAR thresholds (configs/common.har_thresholds) on two untrained models."""
    config, _, out = evaluated
    report = stage.read_json(os.path.join(out, "report.json"))
    erm, har = (report["runs"][r]["test"] for r in ("erm", "har"))
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert evaluate_report.BLESSING_TITLE in md
    for run in ("erm", "har"):
        b = stage.read_json(blessing.path(out, run))
        t = b["thresholds"]
        assert t["overall_floor"]["value"] == report["runs"][run]["test"]["overall"]
        assert t["overall_floor"]["passed"] == (report["runs"][run]["test"]["overall"] >= 0.5)
        expected = all(r["passed"] is not False for r in t.values())
        assert b["status"] == ("BLESSED" if expected else "NOT_BLESSED")
        for name, r in t.items():
            outcome = {True: "pass", False: "FAIL", None: "skipped"}[r["passed"]]
            assert f"| {run} | {b['status']} | {blessing.describe(name, r)} | {outcome} |" in md
    erm_b = stage.read_json(blessing.path(out, "erm"))["thresholds"]
    assert erm_b["noisy_rare_vs_erm"]["passed"] is None  # the baseline itself
    har_b = stage.read_json(blessing.path(out, "har"))["thresholds"]
    diff = har["groups"]["noisy_rare"] - erm["groups"]["noisy_rare"]
    assert har_b["noisy_rare_vs_erm"]["diff"] == pytest.approx(diff)
    assert har_b["noisy_rare_vs_erm"]["passed"] == (diff >= -0.005)
    assert har_b["overall_vs_erm"]["passed"] == (har["overall"] - erm["overall"] >= -0.01)


def test_the_blessing_evaluate_writes_verifies_as_untouched(evaluated):
    """What push checks (blessing.verify, issue 29): the blessing.json the stage wrote
    equals the one recomputed from its report.json, also where a metric is missing
    (NaN, written as null): a threshold on a class the test split lacks."""
    config, _, out = evaluated
    report = stage.read_json(os.path.join(out, "report.json"))
    tests = {n: r["test"] for n, r in report["runs"].items()}
    specs = blessing.thresholds(config)
    for run in ("erm", "har"):
        b = blessing.verify(stage.read_json(blessing.path(out, run)), run, tests, specs)
        assert b["tampered"] is None, b["tampered"]
    tests["har"]["per_class"][3] = None  # as report.json writes a NaN
    spec = {"metric": "accuracy", "slice": "class_3", "lower_bound": 0.1}
    written = blessing.as_written(blessing.judge("har", tests, {"c3": spec}))
    assert written["thresholds"]["c3"]["value"] is None and written["status"] == "NOT_BLESSED"
    assert blessing.verify(written, "har", tests, {"c3": spec})["tampered"] is None


def test_run_batches_gives_every_batch_in_order_through_one_forward():
    """The pipeline's inference loop (estimate_tau's and evaluate's): every batch,
    the last partial one included, in order; an empty dataset gives no batches."""
    from tests.har_tf import tiny_nets

    backbone = tiny_nets.tiny_backbone()
    x = np.random.default_rng(0).normal(size=(37, tiny_nets.IN)).astype("float32")
    y = np.arange(37) % tiny_nets.C
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    logits_of = modeling.forward(backbone)
    outputs = modeling.run_batches(lambda images, labels: (logits_of(images), labels), ds)
    assert [len(labels) for _, labels in outputs] == [8, 8, 8, 8, 5]
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in outputs]), y)
    np.testing.assert_allclose(
        np.concatenate([logits for logits, _ in outputs]),
        backbone(x, training=False).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert modeling.run_batches(lambda images, labels: logits_of(images), ds.take(0)) == []
