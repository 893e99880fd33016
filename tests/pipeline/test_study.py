"""The study runner (pipeline.study*): statistics, selection, validation split, configs,
and the CLI end to end (smoke study, rerun, SIGKILL and resume)."""

import fcntl
import glob
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from configs.studies import smoke
from configs.studies.common import method as c_method
from pipeline import preprocess, pretrain
from pipeline.core import stage
from pipeline.data import datasets, validation
from pipeline.study import config as study_config
from pipeline.study import plots as study_plots
from pipeline.study import records as study_records
from pipeline.study import report, study_md
from pipeline.study import stats as st
from pipeline.study.config import Job, StudyConfigError
from pipeline.study.runner import Study, run_study
from pipeline.training import epoch_eval, modeling
from tests import harness
from tests.pipeline import idx_fixtures
from tests.pipeline.workdir_fixtures import tiny_config

REPO = harness.REPO

# ----------------------------------------------------------------------------------
# Statistics against hand-computed values


def test_summary_mean_std_and_t_interval():
    s = st.summary([0.5, 0.7, 0.6])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(0.1)  # sqrt(((-.1)^2 + .1^2 + 0) / 2)
    half = 4.3027 * 0.1 / math.sqrt(3)  # t_{0.975, 2} = 4.3027
    assert s["ci95"] == pytest.approx([0.6 - half, 0.6 + half])
    one = st.summary([0.4])
    assert one["mean"] == 0.4 and one["std"] is None and one["ci95"] is None
    assert st.summary([])["mean"] is None


def test_t_quantiles():
    # Hand-copied from a t table, and the 1/df expansion beyond the table.
    assert st.t_quantile_975(1) == 12.7062
    assert st.t_quantile_975(4) == 2.7764
    assert st.t_quantile_975(30) == 2.0423
    assert st.t_quantile_975(40) == pytest.approx(2.0211, abs=1e-4)
    assert st.t_quantile_975(120) == pytest.approx(1.9799, abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 200):
        assert st.t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-4)
    with pytest.raises(ValueError):
        st.t_quantile_975(0)


def test_paired_difference_uses_common_seeds():
    har = {0: 0.5, 1: 0.7, 2: 0.9}
    erm = {0: 0.4, 1: 0.7, 2: 0.6, 3: 0.1}
    d = st.paired(har, erm)
    assert d["seeds"] == [0, 1, 2]
    assert d["values"] == pytest.approx([0.1, 0.0, 0.3])
    mean = 0.4 / 3
    sd = math.sqrt(((0.1 - mean) ** 2 + mean**2 + (0.3 - mean) ** 2) / 2)
    assert d["mean"] == pytest.approx(mean) and d["std"] == pytest.approx(sd)
    assert d["ci95"][1] - d["mean"] == pytest.approx(4.3027 * sd / math.sqrt(3))


def test_mean_curve_is_none_where_a_curve_has_no_value():
    curves = [[None, 0.2, 0.4], [None, 0.4, 0.8, 0.9], None]
    assert st.mean_curve(curves) == pytest.approx([None, 0.3, 0.6])
    assert st.mean_curve([[0.5, None], [None, 1.0]]) == [None, None]
    assert st.mean_curve([None]) is None


def test_group_accuracy_weights_by_test_counts():
    per_class = [1.0, 0.5, 0.0]
    assert st.group_accuracy(per_class, [10, 30, 5], (0, 1)) == pytest.approx(25 / 40)
    assert st.group_accuracy(per_class, [10, 0, 5], (1,)) is None


def test_memorization_metrics_from_counts():
    # rows: examples, hits vs noisy label, mislabelled, mislabelled predicted as their
    # (wrong) label, hits vs clean label; per noisy label (3 classes).
    counts = [[4, 2, 0], [4, 1, 0], [2, 1, 0], [1, 1, 0], [3, 1, 0]]
    m = epoch_eval.label_set_metrics(counts, "fit_")
    assert m["fit_accuracy"] == pytest.approx(5 / 6)
    assert m["fit_mean_class_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["fit_memorized"] == pytest.approx(2 / 3)
    assert m["fit_clean_label_accuracy"] == pytest.approx(4 / 6)
    assert "fit_class_2_accuracy" not in m  # no example labelled 2


def test_label_set_monitor_matches_a_per_example_loop():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    noisy = rng.integers(0, 3, 50)
    clean = np.where(rng.random(50) < 0.3, rng.integers(0, 3, 50), noisy)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    ds = tf.data.Dataset.from_tensor_slices((x, noisy, {"clean_label": clean})).batch(16)
    monitor = epoch_eval.LabelSetMonitor(ds, 3, "val_")
    monitor.set_model(model)
    got = monitor.evaluate()
    pred = np.argmax(model(x).numpy(), axis=-1)
    wrong = noisy != clean
    assert got["val_accuracy"] == pytest.approx(np.mean(pred == noisy))
    assert got["val_memorized"] == pytest.approx(np.mean(pred[wrong] == noisy[wrong]))
    per_class = [np.mean(pred[noisy == c] == c) for c in range(3)]
    assert got["val_mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    assert got["val_clean_label_accuracy"] == pytest.approx(np.mean(pred == clean))


def test_select_lam_ties_pending_and_failed():
    sel = st.select_lam({"1": [0.5, 0.7], "10": [0.6, 0.6], "3": [0.2, 0.2]})
    assert sel["selected"] == "1"  # 0.6 ties with lam 10: the smaller wins
    assert [*sel["table"]] == ["1", "3", "10"]
    assert st.select_lam({"1": [0.5, None], "10": [0.9, 0.9]})["selected"] is None
    assert st.select_lam({"1": [0.5, None], "10": [0.9, 0.9]})["pending"]
    assert st.select_lam({"1": [0.5, 0.5], "10": [0.9, "failed"]})["selected"] == "1"
    assert st.oracle_lam({"1": [0.5, 0.5], "10": [0.9, 0.8]}) == "10"
    # As in the selection: a failed lam is not eligible; one not run yet leaves it open.
    assert st.oracle_lam({"1": [0.5, 0.5], "10": [0.9, "failed"]}) == "1"
    assert st.oracle_lam({"1": [0.5, 0.5], "10": [0.9, None]}) is None
    assert st.oracle_lam({"1": ["failed", 0.5], "10": [0.9, "failed"]}) is None


def test_select_lam_breaks_an_exact_tie_to_the_smaller_whatever_the_float_rounding():
    # Study 2's validation split: 15 examples of each noisy & rare class, 150 of the
    # others. Two lambdas with the same total of per-class fractions (a hit moved from
    # class 4 to class 2: +1/15 - 1/15), summed as the monitor sums them.
    n = [15, 150, 15, 150, 15, 150, 15, 150, 150, 150]
    hits = [12, 131, 14, 148, 8, 136, 7, 129, 124, 144]
    moved = list(hits)
    moved[2], moved[4] = moved[2] + 1, moved[4] - 1
    a, b = (float(np.mean([h / k for h, k in zip(x, n, strict=True)])) for x in (hits, moved))
    assert a != b and abs(a - b) < 1e-12  # the same fraction, two floats
    low, high = sorted([a, b])
    for small, large in ((low, high), (high, low)):
        sel = st.select_lam({"1": [small, 0.8], "4": [large, 0.8]})
        assert sel["selected"] == "1"
        assert st.oracle_lam({"1": [small, 0.8], "4": [large, 0.8]}) == "1"
    # A real difference (one hit of 150 on one seed: 1/3000 in the mean) still decides.
    assert st.select_lam({"1": [a, 0.8], "4": [a + 1 / 1500, 0.8]})["selected"] == "4"


# ----------------------------------------------------------------------------------
# Selection reads validation, not test: fixture histories in a study workdir


def _fake_done(study, job, val, test_primary, num_classes=10):
    """Writes a done train stage for `job` (its real fingerprint) with a history whose
    final validation score is `val` and noisy_rare test accuracy `test_primary`."""
    cdir, rdir = study.paths(job)
    os.makedirs(os.path.join(cdir, "preprocess"), exist_ok=True)
    counts = [100] * num_classes
    stage.write_json(
        os.path.join(cdir, "preprocess", "manifest.json"),
        {"splits": {"test": {"counts_after_cut": {"clean": counts}}}},
    )
    name = study.run_name(job)
    os.makedirs(os.path.join(rdir, "train", name))
    groups = study.job_config(job).eval.groups
    hist = {
        "loss": [1.0, 0.5],
        epoch_eval.TEST_ACCURACY: [0.1, 0.5],
        "val_mean_class_accuracy": [0.1, val],
    }
    for c in range(num_classes):
        acc = test_primary if c in groups.noisy_rare else 0.9
        hist[epoch_eval.class_accuracy_key(c)] = [0.0, acc]
    stage.write_json(os.path.join(rdir, "train", name, "history.json"), hist)
    stage.write_json(
        os.path.join(rdir, "train", stage.METADATA),
        {"fingerprint": study.fingerprints(job)["train"], "started": 0, "finished": 1},
    )


def _fake_run(primary: str, accuracy: float, memorized: float) -> dict:
    return {
        "test": {"groups": {primary: accuracy}, "overall": accuracy, "per_class": []},
        "fit_accuracy": 1.0 - memorized / 10,
        "fit_memorized": memorized,
    }


def test_regime_map_pairs_each_setting_on_the_seeds_every_setting_runs(tmp_path):
    config = smoke.get_config("all")  # settings main and noaug; har_drw only in main
    config.methods.erm.seeds = config.methods.har.seeds = (0, 1, 2)
    config.settings.noaug.seeds = (0, 1)
    study = Study(config, str(tmp_path / "w"))
    g = config.primary_group
    values = {  # (setting, seed, method) -> (primary accuracy, memorized)
        ("main", 0, "erm"): (0.50, 0.9), ("main", 1, "erm"): (0.40, 0.8),
        ("main", 0, "har"): (0.60, 0.5), ("main", 1, "har"): (0.45, 0.7),
        ("main", 2, "erm"): (0.00, 0.0), ("main", 2, "har"): (1.00, 1.0),  # seed 2: not in noaug
        ("noaug", 0, "erm"): (0.55, 0.3), ("noaug", 1, "erm"): (0.50, 0.2),
        ("noaug", 0, "har"): (0.50, 0.1),
    }  # fmt: skip
    runs = {
        study.run_key(Job(s, k, m, 10.0 if m == "har" else 0.0)): _fake_run(g, *v)
        for (s, k, m), v in values.items()
    }
    runs[study.run_key(Job("noaug", 1, "har", 10.0))] = {"failed": "diverged"}
    selection = {"har": {"selected": 10.0}}
    regime = report.regime_map(study, runs, selection)
    assert list(regime) == ["har"] and regime["har"]["seeds"] == [0, 1]
    main, noaug = regime["har"]["settings"]["main"], regime["har"]["settings"]["noaug"]
    # main: differences 0.10 and 0.05 on seeds 0, 1 (seed 2 left out).
    half = 12.7062 * math.sqrt(((0.10 - 0.075) ** 2 + (0.05 - 0.075) ** 2) / 1) / math.sqrt(2)
    assert main["paired"]["mean"] == pytest.approx(0.075)
    assert main["paired"]["ci95"] == pytest.approx([0.075 - half, 0.075 + half])
    assert main["memorization"]["erm"]["fit_memorized"]["mean"] == pytest.approx(0.85)
    assert main["memorization"]["har"]["fit_accuracy"]["mean"] == pytest.approx(0.94)
    # noaug: HAR's seed 1 failed, so one pair (seed 0): 0.50 - 0.55.
    assert noaug["paired"]["seeds"] == [0] and noaug["paired"]["mean"] == pytest.approx(-0.05)
    assert noaug["memorization"]["erm"]["fit_memorized"]["mean"] == pytest.approx(0.25)
    # Rendered: a table row per setting and a figure.
    result = {"primary_group": g, "reference": "erm", "settings": {}, "regime_map": regime}
    plots = study_plots.write_all(result, str(tmp_path))
    assert os.path.isfile(tmp_path / plots["regime map: har - erm"])
    text = "\n".join(study_md._regime_lines("har", regime["har"], g, "erm"))
    assert f"| main | 7.5 [{100 * (0.075 - half):.1f}, {100 * (0.075 + half):.1f}] (n=2) | " in text
    assert "| noaug | -5.0 (n=1) | 97.5 [91.1, 103.9] (n=2) | 25.0 [" in text
    # Before HAR's lambda is selected there is nothing to pair; with one setting, no map.
    pending = report.regime_map(study, runs, {"har": {"selected": None}})
    assert pending["har"]["settings"]["main"]["paired"]["mean"] is None
    assert report.regime_map(Study(smoke.get_config(), str(tmp_path / "v")), runs, selection) == {}


def test_selection_uses_validation_not_test(tmp_path):
    study = Study(smoke.get_config(), str(tmp_path))
    # lam 1: better on validation; lam 10: better on the test set.
    for seed in (0, 1):
        _fake_done(study, Job("main", seed, "har", 1.0), val=0.8, test_primary=0.3)
        _fake_done(study, Job("main", seed, "har", 10.0), val=0.6, test_primary=0.7)
        _fake_done(study, Job("main", seed, "erm", 0.0), val=0.5, test_primary=0.2)
    sel = report.selections(study)["har"]
    assert sel["selected"] == 1.0
    assert sel["table"]["1"]["mean"] == pytest.approx(0.8)
    assert sel["oracle_on_test"]["lam"] == 10.0  # reported beside it, labelled
    result = report.build(study)
    har = result["settings"]["main"]["methods"]["har"]
    assert har["lam"] == 1.0 and har["groups"]["noisy_rare"]["mean"] == pytest.approx(0.3)
    diff = result["settings"]["main"]["paired_minus_erm"]["har"]["noisy_rare"]
    assert diff["values"] == pytest.approx([0.1, 0.1])
    assert result["complete"]


def test_a_finished_run_gets_a_record_and_a_stale_or_broken_one_is_refused(tmp_path):
    study = Study(smoke.get_config(), str(tmp_path))
    job = Job("main", 0, "har", 1.0)
    _fake_done(study, job, val=0.8, test_primary=0.3)
    key, fp = study.run_key(job), study.fingerprints(job)["train"]
    assert study_records.read(str(tmp_path), key, fp) is None  # none until it is asked
    assert study.status(job) == "done"  # a run finished without a record gets one
    record = study_records.read(str(tmp_path), key, fp)
    assert record["state"] == "done" and record["test_counts"] == [100] * 10
    assert record["history"]["val_mean_class_accuracy"] == [0.1, 0.8]
    assert record["finished"] - record["started"] == 1
    # The record is what counts: without the workdir's run it is still done...
    shutil.rmtree(study.paths(job)[1])
    assert study.status(job) == "done"
    # ... a record of another fingerprint (config or code) is not ...
    path = study_records.path(str(tmp_path), key)
    study_records.write(str(tmp_path), key, dict(record, fingerprint="other"))
    assert study.status(job) == "todo"
    # ... and one that is not a record stops the study, naming the file.
    with open(path, "w") as f:
        f.write("{trunc")
    with pytest.raises(stage.PipelineError, match=r"run record .*har_lam1\.json is unreadable"):
        study.status(job)


def test_tau_by_cell_shows_runs_of_one_cell_that_trained_with_different_taus(tmp_path):
    study = Study(smoke.get_config(), str(tmp_path))
    taus = {(0, 1.0): [1.0, 0.5], (0, 10.0): [1.0, 0.25], (1, 1.0): [0.3, 0.3]}
    for (seed, lam), tau in taus.items():
        job = Job("main", seed, "har", lam)
        _fake_done(study, job, val=0.5, test_primary=0.5)
        tau_dir = os.path.join(study.paths(job)[1], "estimate_tau")
        os.makedirs(tau_dir)
        stage.write_json(os.path.join(tau_dir, "tau.json"), {"tau": tau})
    erm = Job("main", 0, "erm", 0.0)  # no tau: not counted
    _fake_done(study, erm, val=0.5, test_primary=0.5)
    jobs = [Job("main", s, "har", lam) for s, lam in taus] + [erm, Job("main", 1, "har", 10.0)]
    got = report.tau_by_cell(study, jobs)
    assert got == {
        "main/seed0": {"runs": 2, "max_abs_difference": 0.25},
        "main/seed1": {"runs": 1, "max_abs_difference": 0.0},
    }
    text = "\n".join(study_md._tau_lines(got))
    assert "main/seed0: 2 runs, max |difference| 0.25" in text and "seed1" not in text
    same = study_md._tau_lines({"main/seed1": got["main/seed1"]})
    assert same[-1] == "Every cell's runs trained with the same tau (1 cells)."


def test_memorization_per_epoch_table_holds_the_mean_curves_at_evaluated_epochs():
    """study.md's per-epoch memorization table, cells by hand from the mean curves: only
    the epochs where some method has a value (1-based), a blank where a method has none,
    a method without the pass left out."""
    acc, mem = study_plots.FIT_ACC, study_plots.FIT_MEM
    methods = {
        "erm": {"curves": {acc: [None, 0.9, None, 1.0], mem: [None, 0.25, None, 1.0]}},
        "har": {"curves": {acc: [None, 0.875, None, 0.98], mem: [None, None, None, 0.5]}},
        "old": {"curves": {acc: None, mem: None}},
    }
    assert study_md._memorization_lines(methods)[3:] == [
        "| method | epoch 2 | epoch 4 |",
        "|---|---|---|",
        "| erm | 90.0 / 25.0 | 100.0 / 100.0 |",
        "| har | 87.5 / n/a | 98.0 / 50.0 |",
    ]
    assert study_md._memorization_lines({"erm": {"curves": {mem: [None, None]}}}) == []


def test_selection_is_pending_until_every_grid_run_is_done(tmp_path):
    study = Study(smoke.get_config(), str(tmp_path))
    _fake_done(study, Job("main", 0, "har", 1.0), val=0.8, test_primary=0.3)
    assert study.selection()["har"] is None
    result = report.build(study)
    assert not result["complete"] and result["runs_done"] == 1


def test_a_failed_grid_run_leaves_its_lambda_out_of_the_test_oracle_too(tmp_path):
    """smoke's har grid (1, 10) on seeds 0 and 1: lam 10 has the better test score on
    seed 0 but failed on seed 1, so neither the selection nor the oracle can pick it."""
    study = Study(smoke.get_config(), str(tmp_path))
    for seed in (0, 1):
        _fake_done(study, Job("main", seed, "har", 1.0), val=0.5, test_primary=0.3)
    _fake_done(study, Job("main", 0, "har", 10.0), val=0.9, test_primary=0.9)
    failed = Job("main", 1, "har", 10.0)
    fp = study.fingerprints(failed)["train"]
    study_records.write(
        study.workdir, study.run_key(failed), study_records.failed_record(fp, "NaN")
    )
    assert study.status(failed) == "failed"
    har = report.selections(study)["har"]
    assert har["selected"] == 1.0 and har["oracle_on_test"]["lam"] == 1.0
    assert set(har["oracle_on_test"]["test_noisy_rare"]) == {"1"}


def test_extend_grid_adds_the_next_value_at_the_registered_ratio():
    reg = (5.0, 20.0, 100.0, 500.0)
    assert st.extend_grid(reg, reg, 500.0, 1) == 2500.0  # top edge: x (500 / 100)
    assert st.extend_grid(reg, reg, 5.0, 1) == 1.25  # bottom edge: / (20 / 5)
    assert st.extend_grid(reg, reg, 20.0, 1) is None  # inside: nothing
    assert st.extend_grid(reg, reg, None, 1) is None  # pending: nothing yet
    assert st.extend_grid(reg, reg, 500.0, 0) is None  # the rule is off
    grown = (*reg, 2500.0)
    assert st.extend_grid(reg, grown, 2500.0, 1) is None  # one per side at most
    assert st.extend_grid(reg, grown, 2500.0, 2) == 12500.0
    assert st.extend_grid(reg, grown, 5.0, 1) == 1.25  # the other side has its own count


def test_a_selection_at_the_grid_edge_runs_one_more_lambda_then_selects(tmp_path):
    config = smoke.get_config()  # har's grid (1, 10) on seeds 0 and 1
    config.grid_extensions = 1
    study = Study(config, str(tmp_path))
    for seed in (0, 1):
        _fake_done(study, Job("main", seed, "har", 1.0), val=0.5, test_primary=0.3)
        _fake_done(study, Job("main", seed, "har", 10.0), val=0.7, test_primary=0.3)
        _fake_done(study, Job("main", seed, "erm", 0.0), val=0.5, test_primary=0.2)
    sel = report.selections(study)["har"]
    # 10 is the grid's top: 100 (ratio 10) is added, and the selection waits for it.
    assert sel["grid"] == [1.0, 10.0, 100.0] and sel["added"] == [100.0]
    assert sel["pending"] and sel["selected"] is None
    todo = [j for j in study.plan() if study.status(j) == "todo"]
    assert todo == [Job("main", 0, "har", 100.0), Job("main", 1, "har", 100.0)]
    for seed in (0, 1):
        _fake_done(study, Job("main", seed, "har", 100.0), val=0.8, test_primary=0.3)
    sel = report.selections(study)["har"]
    # 100 wins and is the top again, but one value per side was the limit.
    assert sel["selected"] == 100.0 and sel["grid"] == [1.0, 10.0, 100.0]
    assert report.build(study)["complete"]


# ----------------------------------------------------------------------------------
# The validation split


def test_validation_split_is_stratified_seeded_and_order_free():
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000)
    labels = rng.integers(0, 4, 1000)
    val = validation.split_validation(ids, labels, fraction=0.1, seed=3)
    for c in range(4):
        n_c = np.sum(labels == c)
        assert np.sum(np.isin(ids[labels == c], val)) == round(n_c * 0.1)
    order = rng.permutation(1000)
    again = validation.split_validation(ids[order], labels[order], fraction=0.1, seed=3)
    np.testing.assert_array_equal(val, again)
    other = validation.split_validation(ids, labels, fraction=0.1, seed=4)
    assert not np.array_equal(val, other)
    assert len(validation.split_validation(ids, labels, fraction=0.0, seed=3)) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        validation.split_validation(ids, labels, fraction=1.0, seed=3)


def test_validation_split_in_manifest_and_never_trained_on(tmp_path):
    # 100 test examples: 50 would miss a class, a hard anomaly of preprocess.
    idx_fixtures.write_dataset(tmp_path / "idx", num_train=600, num_test=100)
    config = tiny_config(str(tmp_path / "idx"))
    config.data.val_fraction = 0.2
    workdir = str(tmp_path / "w")
    preprocess.run(config, workdir)
    manifest = datasets.load_manifest(workdir)
    entry = manifest["validation"]
    train = datasets.read_labels(workdir, "train")
    val = np.asarray(entry["ids"])
    assert entry["num_examples"] == len(val) > 0 and entry["fraction"] == 0.2
    assert sum(entry["counts_noisy"]) == len(val)
    np.testing.assert_array_equal(
        val, validation.split_validation(train["id"], train["label"], fraction=0.2, seed=0)
    )
    fit = datasets.read_fit_labels(workdir)
    assert not np.isin(fit["id"], val).any()
    assert len(fit["id"]) + len(val) == len(train["id"]) == entry["num_fit_examples"] + len(val)
    keep = datasets.fit_keep_ids(workdir)
    seen = np.concatenate(
        [
            b[2]["id"].numpy()
            for b in datasets.make_dataset(
                workdir, "train", batch_size=64, training=True, keep_ids=keep, with_meta=True
            )
        ]
    )
    assert len(seen) == len(fit["id"]) and not np.isin(seen, val).any()
    half_a, half_b = pretrain.split_halves(fit["id"], fit["label"], seed=0)
    assert not np.isin(np.concatenate([half_a, half_b]), val).any()
    # The default (0) carves nothing: no manifest entry, every record trains.
    config.data.val_fraction = 0.0
    preprocess.run(config, str(tmp_path / "w0"))
    assert "validation" not in datasets.load_manifest(str(tmp_path / "w0"))
    assert datasets.fit_keep_ids(str(tmp_path / "w0")) is None


# ----------------------------------------------------------------------------------
# Bad study configs fail before any training, naming the field


def _bad(edit):
    config = smoke.get_config()
    edit(config)
    return config


BAD = [
    (lambda c: c.methods.har.update(dict(lamgrid=(1.0,))), "methods.har: unknown field 'lamgrid'"),
    (lambda c: c.methods.har.update(dict(lam_grid=())), "methods.har.lam_grid is empty"),
    (lambda c: c.methods.har.update(dict(lam_grid=(1.0, -1.0))), "methods.har.lam_grid holds -1.0"),
    (
        lambda c: c.settings.main.overrides.update(dict(train=dict(augmnt=False))),
        "settings.main.overrides.train.augmnt",
    ),
    (lambda c: c.overrides.update(dict(dataa=dict(x=1))), "overrides.dataa"),
    (lambda c: c.methods.erm.update(dict(seeds=())), "methods.erm.seeds is empty"),
    (lambda c: c.methods.har.update(dict(regularizer="hra")), "methods.har.regularizer"),
    (lambda c: c.update(dict(primary_group="rare")), "primary_group"),
    (lambda c: c.update(dict(reference="har")), "reference"),
    (lambda c: c.methods.update({"har v2": c.methods.har}), "methods: 'har v2' is not a usable"),
    (lambda c: c.settings.update({"a/b": c.settings.main}), "settings: 'a/b' is not a usable name"),
    (lambda c: c.methods.erm.update(dict(drop="flips")), "methods.erm: run 'erm': drop 'flips'"),
    (
        lambda c: c.methods.erm.update(dict(drop="label_issues")),
        "methods.erm: run 'erm': drop 'label_issues' needs the label issues of cross-fitted",
    ),
    (
        lambda c: c.methods.har.update(dict(reg_every=0)),
        "methods.har: config.train.runs.har_lam1.reg_every must be >= 1, got 0",
    ),
    (lambda c: c.update(dict(grid_extensions=-1)), "grid_extensions must be an integer >= 0"),
    (lambda c: c.update(dict(comparisons=(("har", "hra"),))), "comparisons: "),
    (lambda c: c.update(dict(ceilings=("erm",))), "ceilings: 'erm' is not a method"),
    (lambda c: c.update(dict(cut=("har",))), "cut must be dict"),
    (lambda c: c.update(dict(cut=dict(methods=("erm",), note=" "))), "cut.note is empty"),
    (lambda c: c.update(dict(cut=dict(methods=(), note="n"))), "cut.methods is empty"),
    (lambda c: c.update(dict(cut=dict(methods=("erm",), note="n"))), "cut.methods: 'erm' is not"),
    (lambda c: c.update(dict(cut=dict(methods=("drw",), note="n"))), "cut.methods: 'drw' is not"),
    (lambda c: c.update(dict(cut=dict(methods=("har",), note="n"))), "'har' is a grid method"),
]


@pytest.mark.parametrize("edit,message", BAD)
def test_bad_study_config_names_the_field(tmp_path, edit, message):
    with pytest.raises(StudyConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Study(_bad(edit), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_a_cut_stops_a_methods_unfinished_runs_and_the_report_names_it(tmp_path):
    """smoke's study plus har_drw (HAR's lambda, seeds 0 and 1, tier 1): with every run
    done but har_drw's seed 1, a cut of har_drw leaves that run out of the plan (the
    runner will not train it), keeps seed 0's run in the report, and the study is
    complete with the cut named."""
    config = smoke.get_config()
    config.methods.har_drw = c_method(regularizer="har", lam_from="har", drw=True,
                                      seeds=(0, 1), tier=1)  # fmt: skip
    study = Study(config, str(tmp_path / "w"))
    for job in study.plan():  # the grids and the reference (har_drw pending)
        if job.lam is not None:
            _fake_done(study, job, val=0.5 + job.lam / 100, test_primary=0.3)
    seed1 = Job("main", 1, "har_drw", 10.0)
    assert study.plan()[-1] == seed1 and study.status(seed1) == "todo"
    _fake_done(study, Job("main", 0, "har_drw", 10.0), val=0.5, test_primary=0.4)
    assert not report.build(study)["complete"]
    config.cut = dict(methods=("har_drw",), note="2026-12-05: the budget ran out.")
    study = Study(config, str(tmp_path / "w"))
    assert seed1 not in study.plan() and Job("main", 0, "har_drw", 10.0) in study.plan()
    result = report.build(study)
    assert result["complete"] and "main/seed0/har_drw_lam10" in result["runs"]
    assert result["cut"] == {
        "note": "2026-12-05: the budget ran out.",
        "methods": {"har_drw": {"seeds_finished": [0], "seeds_registered": [0, 1]}},
    }
    text = study_md.markdown(result, {}, {})
    assert text.startswith("# Study `smoke`: COMPLETE, WITH A CUT\n")
    assert "- har_drw: seeds [0] finished of [0, 1] registered" in text
    assert f"Aggregated by the code of {result['code']['commit']}" in text  # not the runs'


def test_a_fractional_lambda_makes_a_usable_run_name(tmp_path):
    config = smoke.get_config()
    config.methods.har.lam_grid = (0.01, 0.5, 2.0)
    Study(config, str(tmp_path / "w"))  # builds every grid run's pipeline config
    job = Job("main", 0, "har", 0.01)
    assert job.run_name("har") == "har_lam0p01"
    runs = study_config.pipeline_config(config, job, REPO).train.runs
    assert list(runs) == ["har_lam0p01"] and runs.har_lam0p01.lam == 0.01
    assert Job("main", 0, "har", 20.0).run_name("har") == "har_lam20"  # as before


SHIPPED_STUDIES = [("fm_hetero", None), ("fm_hetero", "smoke_sizes"), ("imdb_hetero", None),
                   ("smoke", None), ("smoke", "all"), ("smoke", "study2"),
                   ("fm_study2", "probe"), ("fm_study2", None)]  # fmt: skip


@pytest.mark.parametrize("name,variant", SHIPPED_STUDIES)
def test_every_shipped_study_config_builds_every_run(tmp_path, name, variant):
    """Each study config in configs/studies validates and every job of its plan, at
    every grid lambda, has a pipeline config (a study that runs for hours must not
    fail at its last config)."""
    module = importlib.import_module(f"configs.studies.{name}")
    config = module.get_config(variant) if variant else module.get_config()
    study = Study(config, str(tmp_path / "w"))
    grids = {n: tuple(m.lam_grid) for n, m in config.methods.items() if tuple(m.lam_grid)}
    selected = {n: grid[0] for n, grid in grids.items()}
    jobs = study_config.plan(config, selected)
    assert jobs and all(j.lam is not None for j in jobs)
    for job in jobs:
        runs = study.job_config(job).train.runs
        assert list(runs) == [job.run_name(config.methods[job.method].regularizer)]


def test_plan_order_puts_grids_first_and_selected_lam_after():
    config = smoke.get_config("all")
    jobs = study_config.plan(config, {"har": None})
    head = [(j.seed, j.method, j.lam) for j in jobs[:6]]
    assert head == [(0, "erm", 0.0), (0, "har", 1.0), (0, "har", 10.0),
                    (1, "erm", 0.0), (1, "har", 1.0), (1, "har", 10.0)]  # fmt: skip
    assert [(j.setting, j.method, j.lam) for j in jobs[6:]] == [
        ("main", "har_drw", None), ("noaug", "erm", 0.0), ("noaug", "har", None)
    ]  # fmt: skip
    jobs = study_config.plan(config, {"har": 10.0})
    assert [(j.setting, j.method, j.lam) for j in jobs[6:]] == [
        ("main", "har_drw", 10.0), ("noaug", "erm", 0.0), ("noaug", "har", 10.0)
    ]  # fmt: skip


def _fake_runner(monkeypatch, selected):
    """Study with run_job recording the job and marking it done; no aggregation."""
    ran, done = [], set()

    def status(self, job):
        return "pending" if job.lam is None else ("done" if job in done else "todo")

    def run_job(self, job, on_start=None):
        ran.append((job.setting, job.seed, job.method))
        done.add(job)
        return True

    def selections(self):
        return {
            name: {"selected": lam, "grid": list(self.config.methods[name].lam_grid)}
            for name, lam in selected.items()
        }

    monkeypatch.setattr(Study, "status", status)
    monkeypatch.setattr(Study, "run_job", run_job)
    monkeypatch.setattr(Study, "selections", selections)
    monkeypatch.setattr(report, "write", lambda study: None)
    monkeypatch.setattr(report, "estimate_remaining", lambda study, jobs: None)
    return ran


def test_settings_runs_only_the_jobs_of_those_settings(tmp_path, monkeypatch):
    ran = _fake_runner(monkeypatch, {"har": 10.0})
    config = smoke.get_config("all")
    workdir = str(tmp_path / "w")
    assert run_study(config, workdir, settings=["noaug"])
    assert ran == [("noaug", 0, "erm"), ("noaug", 0, "har")]
    assert run_study(config, workdir, settings=["main"])
    assert {s for s, _, _ in ran[2:]} == {"main"} and len(ran) == 2 + 7  # grids, ERM, HAR-DRW
    assert run_study(config, workdir) and len(ran) == 9  # the two made the whole study


def test_settings_names_an_unknown_setting_and_a_lambda_selected_elsewhere(tmp_path, monkeypatch):
    _fake_runner(monkeypatch, {"har": None})
    config = smoke.get_config("all")
    with pytest.raises(
        stage.PipelineError, match=r"--settings: 'noag' is not a setting.*main, noaug"
    ):
        run_study(config, str(tmp_path / "w"), settings=["noag"])
    assert not (tmp_path / "w").exists()
    with pytest.raises(stage.PipelineError, match="selected in setting 'main', which --settings"):
        run_study(config, str(tmp_path / "w"), settings=["noaug"])


def test_a_run_or_cell_another_process_holds_is_skipped_not_failed(tmp_path, monkeypatch):
    """Study.run_job takes the run directory's lock, and the cell's while the cell's
    stages run: a lock another open file holds (another process) makes it raise
    WorkdirInUse before any stage runs, and nothing is recorded as failed."""
    from pipeline.core import workdir_lock
    from pipeline.study import runner as study_module

    calls = []
    for name in study_module.CELL_STAGES:
        monkeypatch.setitem(
            study_module.STAGE_RUNS, name, lambda config, workdir, n=name: calls.append(n)
        )
    study = Study(smoke.get_config(), str(tmp_path / "w"))
    job = Job("main", 0, "har", 1.0)
    cdir, rdir = study.paths(job)
    failed = os.path.join(rdir, study_module.FAILED)

    def trains(config, workdir):
        calls.append("train")

    monkeypatch.setitem(study_module.STAGE_RUNS, "train", trains)
    for held_dir in (rdir, cdir):
        with workdir_lock.held(held_dir):
            with pytest.raises(workdir_lock.WorkdirInUse, match="in use by PID"):
                study.run_job(job)
        assert calls == [] and not os.path.exists(failed)

    def bad_input(config, workdir):
        raise stage.PipelineError("run 'har': drop 'label_issues' left no example")

    # An error that is not a divergence is no result: it stops the study, unrecorded.
    monkeypatch.setitem(study_module.STAGE_RUNS, "train", bad_input)
    with pytest.raises(stage.PipelineError, match="left no example"):
        study.run_job(job)
    assert not os.path.exists(failed)

    def diverged(config, workdir):
        raise modeling.TrainingDiverged("the loss is NaN")

    monkeypatch.setitem(study_module.STAGE_RUNS, "train", diverged)
    assert study.run_job(job)  # recorded, not raised
    assert calls == ["preprocess", "pretrain", "estimate_tau"] * 2
    assert stage.read_json(failed)["error"] == "the loss is NaN"


def test_a_process_waits_while_another_holds_the_last_runs(tmp_path, monkeypatch):
    """With every run done but one that another open file's lock holds (another
    process trains it), the runner reports "held" (it waits) instead of training it
    or calling the study stuck; run_study polls until the run is finished."""
    from pipeline.core import workdir_lock
    from pipeline.study import runner as study_module

    study = Study(smoke.get_config(), str(tmp_path / "w"))
    last = Job("main", 1, "har", 10.0)
    for job in study.plan():
        if job != last:
            _fake_done(study, job, val=0.5, test_primary=0.3)
    jobs = study.plan()
    todo = [j for j in jobs if study.status(j) == "todo"]
    assert todo == [last]
    with workdir_lock.held(study.paths(last)[1]):
        assert study_module._run_next(study, jobs, todo, time.time()) == "held"
        polls = []

        def other_process_finishes(seconds):
            polls.append(seconds)
            _fake_done(study, last, val=0.5, test_primary=0.3)

        monkeypatch.setattr(study_module.time, "sleep", other_process_finishes)
        monkeypatch.setattr(report, "write", lambda study: None)
        assert run_study(study.config, study.workdir, poll_seconds=7.0)
    assert polls == [7.0]


def test_aggregations_of_one_study_take_turns(tmp_path, monkeypatch):
    """study_report.write holds the study's lock file while it writes (two processes
    may run one study side by side on disjoint settings)."""
    result = {"code": {"commit": "abc", "dirty": False}}
    monkeypatch.setattr(report, "build", lambda study: result)
    monkeypatch.setattr(report, "runtime_table", lambda study: {})
    monkeypatch.setattr(study_plots, "write_all", lambda result, out: {})
    monkeypatch.setattr(study_md, "markdown", lambda result, plots, runtimes: "# s\n")
    study = Study(smoke.get_config(), str(tmp_path / "w"))
    out = tmp_path / "w" / "study"
    out.mkdir(parents=True)
    writer = threading.Thread(target=report.write, args=(study,))
    with open(out / report.LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process aggregating
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and not (out / "study.json").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.join(timeout=30)
    assert not writer.is_alive() and json.loads((out / "study.json").read_text()) == result


# ----------------------------------------------------------------------------------
# The CLI end to end on a tiny generated dataset


def _argv(workdir, idx_dir, *extra):
    return [
        sys.executable, "-m", "pipeline.study",
        "--config=" + os.path.join(REPO, "configs", "studies", "smoke.py"),
        f"--config.overrides.data.data_dir={idx_dir}",
        "--config.overrides.data.limit_train=600",
        "--config.overrides.data.limit_test=100",
        f"--workdir={workdir}", *extra,
    ]  # fmt: skip


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("HAR_DATA_DIR", None)
    return env


def _study(workdir, idx_dir, *extra):
    return subprocess.run(
        _argv(workdir, idx_dir, *extra), cwd=REPO, env=_env(), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    idx_fixtures.write_dataset(directory, num_train=600, num_test=100)
    return str(directory)


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, idx_dir):
    workdir = str(tmp_path_factory.mktemp("study") / "w")
    result = _study(workdir, idx_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_smoke_study_writes_finite_results(smoke_study):
    workdir, result = smoke_study
    out = os.path.join(workdir, "study")
    for name in ("study.json", "study.md", "COMMIT", "accuracy_main.png", "curves_main.png",
                 "memorization_main.png"):  # fmt: skip
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "study.json")) as f:
        s = json.load(f)
    assert s["complete"] and s["runs_done"] == s["runs_planned"] == 6 and not s["runs_failed"]
    assert s["selection"]["har"]["selected"] in (1.0, 10.0)
    for r in s["settings"]["main"]["methods"].values():
        assert r["seeds_done"] == [0, 1]
        for g in ("noisy_rare", "clean"):
            assert all(math.isfinite(v) for v in r["groups"][g]["ci95"])
        assert math.isfinite(r["memorization"]["fit_accuracy"]["mean"])
    assert result.stdout.count("finished in") == 6 and "estimated for the rest" in result.stdout
    assert "study complete" in result.stdout


def test_smoke_study_rerun_skips_everything(smoke_study, idx_dir):
    workdir, _ = smoke_study
    histories = sorted(
        glob.glob(
            os.path.join(workdir, "cells", "*", "*", "runs", "*", "train", "*", "history.json")
        )
    )
    assert len(histories) == 6
    before = [os.stat(p).st_mtime_ns for p in histories]
    with open(os.path.join(workdir, "study", "study.json")) as f:
        first = f.read()
    again = _study(workdir, idx_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running" not in again.stdout and "study complete" in again.stdout
    assert [os.stat(p).st_mtime_ns for p in histories] == before
    with open(os.path.join(workdir, "study", "study.json")) as f:
        assert f.read() == first


def test_run_records_alone_carry_the_study(smoke_study, idx_dir, tmp_path):
    """A new workdir holding only the finished study's records (what a new machine
    gets from `cp -r DIR/study/records`): the rerun trains nothing, and its study.json
    is the original's."""
    workdir, _ = smoke_study
    records = os.path.join(workdir, "study", study_records.RECORDS)
    assert len(glob.glob(os.path.join(records, "*", "*", "*.json"))) == 6
    fresh = tmp_path / "fresh"
    (fresh / "study").mkdir(parents=True)
    shutil.copytree(records, fresh / "study" / study_records.RECORDS)
    again = _study(str(fresh), idx_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running" not in again.stdout and "study complete" in again.stdout
    assert not (fresh / "cells").exists()
    with open(os.path.join(workdir, "study", "study.json")) as f:
        want = json.load(f)
    with open(fresh / "study" / "study.json") as f:
        assert json.load(f) == want


def test_study_records_script_saves_and_restores_without_overwriting(tmp_path):
    root, docs = tmp_path / "runs", tmp_path / "docs"
    made = root / "s1" / "study" / "records" / "main" / "seed0"
    made.mkdir(parents=True)
    (made / "erm.json").write_text('{"a": 1}\n')
    (made / "har_lam1.json.123.tmp").write_text("{half")  # a record being written

    def script(*args):
        env = dict(os.environ, STUDY_RECORDS_DOCS=str(docs))
        cmd = ["bash", os.path.join(REPO, "scripts", "study_records.sh"), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout

    assert "1 records copied" in script("save", str(root), "s1")
    assert (docs / "s1" / "records" / "main" / "seed0" / "erm.json").read_text() == '{"a": 1}\n'
    assert not list((docs / "s1").rglob("*.tmp"))
    fresh = tmp_path / "fresh"
    assert "1 records copied" in script("restore", str(fresh), "s1")
    restored = fresh / "s1" / "study" / "records" / "main" / "seed0" / "erm.json"
    assert restored.read_text() == '{"a": 1}\n'
    restored.write_text('{"newer": 1}\n')  # restore never overwrites the workdir's
    assert "0 records copied" in script("restore", str(fresh), "s1")
    assert restored.read_text() == '{"newer": 1}\n'


def test_run_study_script_refuses_a_study_workdir_as_its_root(tmp_path):
    """scripts/run_study.sh ROOT [STUDY ...] runs ROOT/<study>; a study's workdir given
    as ROOT (its name left off) is refused before any study starts in it."""
    workdir = tmp_path / "fm_study2"
    (workdir / "cells").mkdir(parents=True)
    cmd = ["bash", os.path.join(REPO, "scripts", "run_study.sh"), str(workdir)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: {workdir} is a study's workdir" in result.stderr
    assert f"scripts/run_study.sh {tmp_path} fm_study2" in result.stderr
    assert sorted(os.listdir(workdir)) == ["cells"]  # nothing started in it


def test_bad_study_config_fails_on_the_command_line(tmp_path, idx_dir):
    result = _study(str(tmp_path / "w"), idx_dir, "--config.methods.har.lam_grid=(1.0, -2.0)")
    assert result.returncode == 1
    assert "methods.har.lam_grid holds -2.0" in result.stderr
    assert not os.path.exists(tmp_path / "w" / "cells")
    result = _study(str(tmp_path / "w"), idx_dir, "--settings=main,nosuch")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: study: --settings: 'nosuch' is not a setting of this study" in result.stderr
    assert not os.path.exists(tmp_path / "w")


def _study_json(workdir: str) -> dict:
    with open(os.path.join(workdir, "study", "study.json")) as f:
        return json.load(f)


def _without(smoke_study, workdir: str, runs=(), cell_stages=()) -> None:
    """Copies the finished smoke study to workdir without some of seed 1's work: the
    train stage and record of each run in `runs`, and the cell stages `cell_stages`;
    everything else kept."""
    shutil.copytree(smoke_study[0], workdir, symlinks=True)
    cell = os.path.join(workdir, "cells", "main", "seed1")
    for name in runs:
        shutil.rmtree(os.path.join(cell, "runs", name, "train"))
        records = os.path.join(workdir, "study", study_records.RECORDS, "main", "seed1")
        os.remove(os.path.join(records, f"{name}.json"))
    for name in cell_stages:
        shutil.rmtree(os.path.join(cell, name))


def _without_last_run(smoke_study, workdir: str) -> str:
    """The smoke study in workdir without its last run (seed 1, HAR lam 10), whose
    directory it returns."""
    _without(smoke_study, workdir, runs=["har_lam10"])
    return os.path.join(workdir, "cells", "main", "seed1", "runs", "har_lam10")


@pytest.mark.slow
def test_sigkill_mid_study_then_rerun_gives_the_same_study_json(tmp_path, idx_dir, smoke_study):
    workdir = str(tmp_path / "killed")
    run = _without_last_run(smoke_study, workdir)
    # Kill once the missing run has checkpointed its first epoch (of two).
    pattern = os.path.join(run, "train.partial", "*", "checkpoints", "epoch-*.weights.h5")
    proc = subprocess.Popen(_argv(workdir, idx_dir), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 600
        while not glob.glob(pattern):
            assert proc.poll() is None, f"the study ended (rc {proc.returncode}) before {pattern}"
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(os.path.join(run, "train"))  # killed before it finished
    kept = glob.glob(
        os.path.join(workdir, "cells", "*", "*", "runs", "*", "train", "*", "history.json")
    )
    before = {p: os.stat(p).st_mtime_ns for p in kept}
    assert len(before) == 5
    resumed = _study(workdir, idx_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("finished in") == 1  # the killed run; the other 5 were kept
    assert "main seed 1 har_lam10: finished in" in resumed.stdout
    # It continued the killed attempt (whose TensorBoard log of epoch 1 is kept beside
    # the resumed process's) rather than starting over.
    events = glob.glob(os.path.join(run, "train", "*", "tensorboard", "train", "events.*"))
    assert len(events) == 2, events
    assert {p: os.stat(p).st_mtime_ns for p in kept} == before
    assert _study_json(workdir) == _study_json(smoke_study[0])


@pytest.mark.slow
def test_max_jobs_stops_with_exit_75_and_a_rerun_gives_the_same_study(
    tmp_path, idx_dir, smoke_study
):
    """The smoke study without seed 1's HAR runs and its cell's pretrain and tau, run
    with --max_jobs=1: it trains seed 1's HAR at lambda 1 (its cell's pretrain first, in
    a fresh process, not after seed 0's jobs as in the uninterrupted study: the
    boundary where issue 29 found a different study.json) and stops with exit 75; the
    rerun trains the last run, and the study equals the uninterrupted one."""
    workdir = str(tmp_path / "w")
    seed1_har = ["har_lam1", "har_lam10"]
    _without(smoke_study, workdir, runs=seed1_har, cell_stages=["pretrain", "estimate_tau"])
    result = _study(workdir, idx_dir, "--max_jobs=1")
    assert result.returncode == 75, result.stderr[-3000:]
    assert (
        result.stdout.count("finished in") == 1 and "1 runs (--max_jobs); 1 left" in result.stdout
    )
    assert "main seed 1 har_lam1: finished in" in result.stdout
    with open(os.path.join(workdir, "study", "study.json")) as f:
        s = json.load(f)
    assert not s["complete"] and s["runs_done"] == 5
    assert s["selection"]["har"]["pending"]
    assert "PARTIAL" in open(os.path.join(workdir, "study", "study.md")).read()
    rest = _study(workdir, idx_dir)
    assert rest.returncode == 0 and rest.stdout.count("finished in") == 1, rest.stderr[-3000:]
    assert "main seed 1 har_lam10: finished in" in rest.stdout
    assert _study_json(workdir) == _study_json(smoke_study[0])


@pytest.mark.slow
def test_two_study_processes_on_one_workdir_never_train_the_same_run(tmp_path, idx_dir):
    """Two real processes started together on one study: each run is trained by
    exactly one of them (its run lock), and both finish with the study complete.
    HAR's grid is one lambda: 4 runs in 2 cells, each cell with a run that needs only
    its preprocess (ERM) and one that needs its pretrain and tau (HAR)."""
    workdir = str(tmp_path / "w")
    argv = _argv(workdir, idx_dir, "--config.methods.har.lam_grid=(1.0,)")
    procs = [
        subprocess.Popen(
            argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    started = [
        line.split(": running")[0].split("] ", 1)[1]
        for out, _ in outs
        for line in out.splitlines()
        if line.endswith(": running")
    ]
    assert sorted(started) == sorted(set(started)) and len(started) == 4, started
    finished = [
        line.split(": finished in")[0].split("] ", 1)[1]
        for out, _ in outs
        for line in out.splitlines()
        if ": finished in" in line
    ]
    assert sorted(finished) == sorted(started), finished
    assert all(out.count("finished in") >= 1 for out, _ in outs)  # both did work
    with open(os.path.join(workdir, "study", "study.json")) as f:
        s = json.load(f)
    assert s["complete"] and s["runs_done"] == 4 and not s["runs_failed"]


@pytest.mark.slow
def test_smoke_study2_runs_every_new_method(tmp_path, idx_dir):
    """configs/studies/smoke.py:study2 end to end: cleanlab's filter (with and without
    HAR) drops exactly what label_issues.csv flags, the oracle filter exactly the
    wrong labels, the clean-label ceiling trains; HAR's pick at its grid's edge grew
    the grid; the study's analyses are written."""
    workdir = str(tmp_path / "w")
    argv = [a + ":study2" if a.startswith("--config=") else a for a in _argv(workdir, idx_dir)]
    result = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "study", "study.json")) as f:
        s = json.load(f)
    assert s["complete"] and not s["runs_failed"]
    har = s["selection"]["har"]
    # A two-value grid's pick is always at an edge: one value was added beyond it.
    assert len(har["added"]) == 1 and har["added"][0] in (0.1, 100.0), har
    assert har["grid"] == sorted([1.0, 10.0, *har["added"]]) and har["selected"] in har["grid"]
    cell = os.path.join(workdir, "cells", "main", "seed0")
    flags = pd.read_csv(os.path.join(cell, "estimate_tau", "label_issues.csv"))
    fit = datasets.read_fit_labels(os.path.join(cell, "runs", "erm"))
    wrong = fit["label"] != fit["clean_label"]
    flagged = set(flags.loc[flags["is_label_issue"], "id"])
    runs = s["runs"]
    lam = study_config.lam_label(har["selected"])
    rates = np.asarray(
        stage.read_json(os.path.join(cell, "estimate_tau", "tau.json"))["cleanlab_noise_rate"]
    )
    for key in ("main/seed0/cl_filter", f"main/seed0/cl_filter_har_lam{lam}"):
        chosen = runs[key]["training_set"]
        assert chosen["dropped"] == len(flagged & set(fit["id"])), key
        assert chosen["dropped_wrongly_labelled"] == len(flagged & set(fit["id"][wrong]))
        # CleanLearning's weights after its drop: 1 / max(1 - noise rate, 1e-3).
        assert chosen["class_weights"] == pytest.approx(1 / np.maximum(1 - rates, 1e-3))
    oracle = runs["main/seed0/erm_oracle_filter"]["training_set"]
    assert oracle["dropped"] == oracle["wrongly_labelled"] == int(wrong.sum())
    assert runs["main/seed0/erm_clean"]["training_set"]["labels"] == "clean"
    analysis = s["analysis"]
    assert set(analysis["headroom"]["main"]) == {"erm_clean", "erm_oracle_filter"}
    assert "cl_filter_har - cl_filter" in analysis["comparisons"]["main"]
    mem = analysis["memorization_vs_gain"]["without_drops"]
    assert mem["methods_left_out"] == ["cl_filter", "cl_filter_har"]  # not the ceilings
    with open(os.path.join(workdir, "study", "study.md")) as f:
        assert "Without cl_filter, cl_filter_har (descriptive, not pre-registered" in f.read()
    # True noise over the training examples (not the train split with its validation).
    labels = np.asarray(fit["label"])
    expected = [
        float(np.mean(wrong[labels == c])) if (labels == c).any() else None for c in range(10)
    ]
    assert analysis["tau_vs_noise"]["main/seed0"]["true_noise"] == pytest.approx(expected)
    # The oracle dropped every wrong label, yet its memorization pass covers them (the
    # whole training set, as ERM's): a share of the same examples, not a missing value.
    for key in ("main/seed0/erm_oracle_filter", "main/seed0/cl_filter", "main/seed0/erm"):
        assert runs[key]["fit_memorized"] is not None, key
