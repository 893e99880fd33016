"""Study 2's analyses (pipeline.study.analysis) against hand-computed values and scipy."""

import math

import numpy as np
import pytest

from pipeline.study import analysis as sa


def _run(setting, method, seed, lam, primary, memorized=None, overall=None, training_set=None):
    run = {
        "setting": setting,
        "method": method,
        "seed": seed,
        "lam": lam,
        "test": {"groups": {"noisy_rare": primary, "clean": 0.9}, "overall": overall or primary},
        "fit_memorized": memorized,
    }
    if training_set:
        run["training_set"] = training_set
    return run


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.integers(0, 5, size=9).astype(float)  # ties
        y = rng.normal(size=9)
        expected = scipy_stats.spearmanr(x, y).statistic
        got = sa.spearman(x, y)
        if np.isnan(expected):
            assert got is None
        else:
            assert got == pytest.approx(expected, abs=1e-12)
    assert sa.spearman([1, 2], [2, 1]) is None  # too few points
    assert sa.spearman([1, 1, 1], [1, 2, 3]) is None  # a constant: undefined


def test_spearman_ties_what_float_rounding_splits():
    """The same 23 test examples gained on two seeds, as two different sums of
    fractions (the review's example): a tie, as scipy ranks the integer counts."""
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = 0.005749999999999977, 0.005750000000000033
    assert a != b and abs(a - b) < 1e-15
    x = [a, b, 0.01, 0.02, -0.01]
    y = [-0.1, -0.2, -0.3, -0.4, 0.0]
    expected = scipy_stats.spearmanr([23, 23, 40, 80, -40], y).statistic
    assert scipy_stats.spearmanr(x, y).statistic == pytest.approx(-1.0)  # split apart
    assert sa.spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(-0.9747, abs=1e-4)
    # Values further apart than the tolerance keep their own ranks.
    assert sa.spearman([0.0, 1e-6, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_permutation_p_value():
    # A perfect monotone relation among 7 points: only the 2 of 5040 orderings that are
    # exactly monotone (either way) reach |rho| = 1, so p is about 2/5040 + noise.
    x = np.arange(7.0)
    p = sa.permutation_p(x, -x, permutations=2000, seed=0)
    assert p < 0.01
    assert sa.permutation_p(x, -x, permutations=2000, seed=0) == p  # seeded
    rng = np.random.default_rng(3)
    noise = sa.permutation_p(x, rng.normal(size=7), permutations=500, seed=0)
    assert 0.0 < noise <= 1.0


def test_share_of_headroom_is_a_ratio_of_mean_paired_differences():
    got = sa.share_of_headroom([0.5, 0.7], [0.8, 0.9], [0.4, 0.5])
    # gains 0.1, 0.2 (mean 0.15); headroom 0.4, 0.4 (mean 0.4): 0.375
    assert got["gain"] == pytest.approx(0.15) and got["headroom"] == pytest.approx(0.4)
    assert got["share"] == pytest.approx(0.375)
    assert sa.share_of_headroom([0.5], [0.4], [0.45])["share"] is None  # no headroom
    assert sa.share_of_headroom([], [], [])["share"] is None


def test_true_noise_from_transition_counts():
    # T[clean, noisy]: 10 labelled 0, of which 3 are clean 1; 20 labelled 1, 2 clean 0.
    t = [[7, 2, 0], [3, 18, 0], [0, 0, 0]]
    noise = sa.true_noise(t)
    assert noise[:2] == pytest.approx([0.3, 0.1]) and noise[2] is None


def test_tau_vs_noise_takes_the_training_examples_noise_from_a_drop_summary():
    record = {
        "tau": [0.5, 0.1, 1.0],
        "tau_inputs": {"err": [0.4, 0.1, 0.0], "held_out": [5, 10, 0]},
        # The train split, validation included: label 0 has 12 examples, 4 wrong.
        "train_transition_counts": [[8, 1, 0], [4, 20, 0], [0, 0, 0]],
    }
    # The training examples only (a run's training_set summary): 10 labelled 0, 3 wrong.
    chosen = {
        "per_noisy_label": {
            "0": {"records": 10, "wrongly_labelled": 3, "dropped": 2},
            "1": {"records": 19, "wrongly_labelled": 1, "dropped": 0},
        }
    }
    got = sa.tau_vs_noise({"main/seed0": record, "main/seed1": record}, {"main/seed0": chosen})
    row = got["main/seed0"]
    assert row["true_noise"] == pytest.approx([0.3, 1 / 19, None])
    assert row["true_noise_train_split"] == pytest.approx([4 / 12, 1 / 21, None])
    assert row["tau"] == [0.5, 0.1, 1.0] and row["held_out"] == [5, 10, 0]
    assert got["main/seed1"]["true_noise"] is None  # no summary for that cell yet


def test_class_mean_se_and_mean_se():
    # Two classes: p 0.5 on 100, 0.9 on 10: var = .25/100 + .09/10 = .0115
    assert sa.class_mean_se([0.5, 0.9, None], [100, 10, 0]) == pytest.approx(math.sqrt(0.0115) / 2)
    assert sa.class_mean_se([None], [5]) is None
    assert sa.mean_se([0.03, 0.04]) == pytest.approx(0.025)  # sqrt(.0009 + .0016) / 2
    assert sa.mean_se([0.03, None]) is None and sa.mean_se([]) is None


def _study_runs():
    runs = {}
    for seed, (erm, har, top, mem_erm, mem_har) in enumerate(
        [(0.30, 0.35, 0.60, 1.0, 0.8), (0.32, 0.33, 0.62, 1.0, 0.95), (0.31, 0.40, 0.61, 1.0, 0.5)]
    ):
        runs[f"m/s{seed}/erm"] = _run("m", "erm", seed, 0.0, erm, mem_erm)
        runs[f"m/s{seed}/har"] = _run("m", "har", seed, 20.0, har, mem_har)
        runs[f"m/s{seed}/har5"] = _run("m", "har", seed, 5.0, 0.0, 0.0)  # another lambda
        runs[f"m/s{seed}/clean"] = _run("m", "clean", seed, 0.0, top, 0.0)
    aggregate = {
        "m": {
            "methods": {
                "erm": {"lam": 0.0, "seeds_done": [0, 1, 2]},
                "har": {"lam": 20.0, "seeds_done": [0, 1, 2]},
                "clean": {"lam": 0.0, "seeds_done": [0, 1, 2]},
            }
        }
    }
    return sa.method_runs(runs, aggregate)


def test_comparisons_headroom_and_memorization_on_a_fixture_study():
    per_method = _study_runs()
    assert sorted(per_method["m"]["har"]) == [0, 1, 2]
    assert per_method["m"]["har"][0]["lam"] == 20.0  # the selected lambda's runs only
    comp = sa.comparisons(per_method, [("har", "clean")], ["noisy_rare"])
    assert comp["m"]["har - clean"]["noisy_rare"]["values"] == pytest.approx([-0.25, -0.29, -0.21])
    room = sa.headroom(per_method, ["clean"], "erm", "noisy_rare")["m"]["clean"]
    assert room["headroom"]["mean"] == pytest.approx(0.30)
    # HAR's gains 0.05, 0.01, 0.09 (mean 0.05) of a headroom of 0.30: a sixth.
    assert room["share"]["har"]["share"] == pytest.approx(0.05 / 0.30)
    mem = sa.memorization_vs_gain(per_method, "m", "erm", ["clean"], "noisy_rare", permutations=200)
    assert [p["method"] for p in mem["points"]] == ["har"] * 3
    # gains (.05, .01, .09) against memorized changes (-.2, -.05, -.5): ranks reversed
    assert mem["rho"] == pytest.approx(-1.0)
    assert mem["rho_per_method"]["har"] == pytest.approx(-1.0)
    assert mem["p_value"] is not None
    assert mem["without_drops"]["methods_left_out"] == []  # none drops: the same test
    assert mem["without_drops"]["rho"] == pytest.approx(-1.0)
    assert mem["without_drops"]["points"] == 3


def test_the_descriptive_correlation_leaves_out_the_methods_that_drop():
    dropped = {"drop": "label_issues", "labels": "noisy"}
    per_method = {"m": {"erm": {}, "har": {}, "cl": {}}}
    # har: gains rise as memorization falls (rho -1); cl: gains rise with it (rho +1).
    for seed, (gain, change) in enumerate([(0.01, -0.1), (0.02, -0.2), (0.03, -0.3)]):
        per_method["m"]["erm"][seed] = _run("m", "erm", seed, 0.0, 0.3, memorized=1.0)
        per_method["m"]["har"][seed] = _run("m", "har", seed, 1.0, 0.3 + gain, 1.0 + change)
        per_method["m"]["cl"][seed] = _run(
            "m", "cl", seed, 0.0, 0.3 + 10 * gain, 0.8 + 0.1 * seed, training_set=dropped
        )
    mem = sa.memorization_vs_gain(per_method, "m", "erm", [], "noisy_rare", permutations=100)
    assert len(mem["points"]) == 6  # the pre-registered test keeps every method
    assert mem["rho_per_method"] == pytest.approx({"har": -1.0, "cl": 1.0})
    assert mem["rho"] > -0.5  # pooled, cl's points pull it away from har's -1
    rest = mem["without_drops"]
    assert rest["methods_left_out"] == ["cl"] and rest["points"] == 3
    assert rest["rho"] == pytest.approx(-1.0)


def test_training_sets_summarize_only_runs_that_dropped():
    ts = {"drop": "label_issues", "labels": "noisy", "dropped": 10, "kept": 90,
          "wrongly_labelled": 8, "precision": 0.6, "recall": 0.75}  # fmt: skip
    none = dict(ts, drop="none", dropped=0, precision=None, recall=0.0)
    per_method = {
        "m": {
            "cl": {0: _run("m", "cl", 0, 0.0, 0.3, training_set=ts)},
            "clean": {0: _run("m", "clean", 0, 0.0, 0.3, training_set=none)},
            "erm": {0: _run("m", "erm", 0, 0.0, 0.3)},
        }
    }
    rows = sa.training_sets(per_method)["m"]
    assert list(rows) == ["cl"]
    assert rows["cl"]["precision"]["mean"] == 0.6 and rows["cl"]["dropped"]["mean"] == 10
    assert rows["cl"]["per_seed"] == {
        0: {"dropped": 10, "kept": 90, "wrongly_labelled": 8, "precision": 0.6, "recall": 0.75}
    }
