"""config.eval.thresholds and the blessing (pipeline/evaluation/blessing.py), against hand-computed
outcomes. Values are binary fractions (0.5, 0.625, ...), so every difference below is
exact and the boundary cases test `>=` / `<=` themselves."""

import math
import os

import ml_collections
import pytest

from configs import cifar10_hetero, fashion_mnist_hetero, imdb_hetero
from pipeline import run as run_lib
from pipeline.core import stage
from pipeline.evaluation import blessing

# report.json `test` entries of three runs (only the fields the blessing reads).
TESTS = {
    "erm": {
        "overall": 0.625,
        "groups": {"noisy_rare": 0.5, "clean": 0.75},
        "per_class": [0.25, 1.0],
        "top5": 0.875,
    },
    "har": {
        "overall": 0.5,
        "groups": {"noisy_rare": 0.625, "clean": 0.375},
        "per_class": [0.5, None],  # class 1 without test examples
        "top5": 0.75,
    },
}


def _judge(spec, run="har"):
    return blessing.judge_one(spec, run, TESTS)


@pytest.mark.parametrize(
    "spec, passed",
    [
        ({"slice": "overall", "lower_bound": 0.5}, True),  # 0.5 >= 0.5: the bound holds
        ({"slice": "overall", "lower_bound": 0.625}, False),
        ({"slice": "noisy_rare", "upper_bound": 0.625}, True),  # 0.625 <= 0.625
        ({"slice": "noisy_rare", "upper_bound": 0.5}, False),
        ({"slice": "clean", "lower_bound": 0.25, "upper_bound": 0.5}, True),
        ({"slice": "class_0", "lower_bound": 0.75}, False),
        ({"slice": "class_1", "lower_bound": 0.0}, False),  # no value: fails
        ({"metric": "top5_accuracy", "lower_bound": 0.75}, True),
    ],
)
def test_value_threshold(spec, passed):
    r = _judge(spec)
    assert r["kind"] == "value" and r["passed"] is passed


@pytest.mark.parametrize(
    "spec, passed",
    [
        # har - erm on noisy_rare = 0.625 - 0.5 = +0.125; relative +0.25.
        ({"slice": "noisy_rare", "direction": "higher_is_better", "absolute": 0.125}, True),
        ({"slice": "noisy_rare", "direction": "higher_is_better", "absolute": 0.25}, False),
        ({"slice": "noisy_rare", "direction": "higher_is_better", "relative": 0.25}, True),
        ({"slice": "noisy_rare", "direction": "higher_is_better", "relative": 0.5}, False),
        # Overall: 0.5 - 0.625 = -0.125; relative -0.2.
        ({"slice": "overall", "direction": "higher_is_better", "absolute": -0.125}, True),
        ({"slice": "overall", "direction": "higher_is_better", "absolute": -0.0625}, False),
        # Lower is better: a loss may grow by at most `absolute`.
        ({"slice": "overall", "direction": "lower_is_better", "absolute": -0.125}, True),
        ({"slice": "overall", "direction": "lower_is_better", "absolute": -0.25}, False),
        ({"slice": "noisy_rare", "direction": "lower_is_better", "absolute": 0.0}, False),
        ({"slice": "noisy_rare", "direction": "lower_is_better", "relative": 0.25}, True),
        # Both given: both must hold (absolute holds, relative -0.2 < -0.1 does not).
        (
            {
                "slice": "overall",
                "direction": "higher_is_better",
                "absolute": -0.25,
                "relative": -0.1,
            },
            False,
        ),
    ],
)
def test_change_threshold(spec, passed):
    r = _judge({**spec, "baseline": "erm"})
    assert r["kind"] == "change" and r["passed"] is passed
    base = TESTS["erm"]["groups"].get(spec["slice"], TESTS["erm"]["overall"])
    assert r["baseline_value"] == base
    assert r["diff"] == r["value"] - base
    assert r["relative_change"] == pytest.approx((r["value"] - base) / base)


def test_the_baseline_run_is_not_judged_against_itself():
    specs = {
        "floor": {"slice": "overall", "lower_bound": 0.75},
        "vs_erm": {"baseline": "erm", "direction": "higher_is_better", "absolute": 0.5},
    }
    b = blessing.judge("erm", TESTS, specs)
    assert b["thresholds"]["vs_erm"]["passed"] is None
    assert b["thresholds"]["vs_erm"]["skipped"] == "this run is the baseline"
    assert b["status"] == blessing.NOT_BLESSED  # the floor: 0.625 < 0.75
    assert blessing.failures(b) == [
        "floor: accuracy on overall = 0.6250, must be >= 0.75",
    ]
    specs["floor"]["lower_bound"] = 0.5
    assert blessing.judge("erm", TESTS, specs)["status"] == blessing.BLESSED


def test_status_and_failures_of_a_candidate():
    specs = {
        "noisy_rare_vs_erm": {
            "slice": "noisy_rare",
            "baseline": "erm",
            "direction": "higher_is_better",
            "absolute": -0.005,
        },
        "overall_vs_erm": {"baseline": "erm", "direction": "higher_is_better", "absolute": -0.01},
    }
    b = blessing.judge("har", TESTS, specs)
    assert b["status"] == blessing.NOT_BLESSED
    assert [r["passed"] for r in b["thresholds"].values()] == [True, False]
    assert blessing.failures(b) == [
        "overall_vs_erm: accuracy on overall = 0.5000 vs erm's 0.6250 (change -0.1250, "
        "relative -0.2000), must be change >= -0.01"
    ]
    assert blessing.judge("har", TESTS, {})["status"] == blessing.BLESSED


def test_failures_read_back_from_json_name_missing_figures(tmp_path):
    """A slice without test examples (value NaN) and a baseline of 0 (relative change
    undefined) are null in blessing.json; the push stage still words them."""
    tests = {
        "erm": {"overall": 0.0, "groups": {}, "per_class": [None], "top5": None},
        "har": {"overall": 0.0, "groups": {}, "per_class": [None], "top5": None},
    }
    specs = {
        "class_0_floor": {"slice": "class_0", "lower_bound": 0.5},
        "vs_erm": {"baseline": "erm", "direction": "higher_is_better", "relative": 0.1},
    }
    path = str(tmp_path / "blessing.json")
    stage.write_json(path, blessing.judge("har", tests, specs))
    assert blessing.failures(stage.read_json(path)) == [
        "class_0_floor: accuracy on class_0 = n/a, must be >= 0.5",
        "vs_erm: accuracy on overall = 0.0000 vs erm's 0.0000 (change +0.0000, relative n/a), "
        "must be relative change >= +0.1",
    ]


def _config(**thresholds):
    config = fashion_mnist_hetero.get_config("smoke")
    config.eval.thresholds = ml_collections.ConfigDict(thresholds)
    return config


@pytest.mark.parametrize(
    "spec, match",
    [
        (dict(baseline="ermm", direction="higher_is_better", absolute=0.0), "'ermm' names no run"),
        (dict(metric="auc", lower_bound=0.5), r"t.metric: unknown 'auc'"),
        (dict(slice="noisy", lower_bound=0.5), r"t.slice: unknown 'noisy'"),
        (dict(slice="class_10", lower_bound=0.5), r"t.slice: unknown 'class_10'"),
        (dict(lower_bound=0.5, baseline="erm"), "not both"),
        (dict(metric="accuracy"), "not neither"),
        (dict(lower_bound="0.5"), r"t.lower_bound must be a finite number, got '0.5'"),
        (dict(lower_bound=math.nan), "must be a finite number"),
        (dict(lower_bound=0.6, upper_bound=0.5), "lower_bound > upper_bound"),
        (dict(baseline="erm", direction="up", absolute=0.0), "direction must be one of"),
        (dict(baseline="erm", direction="higher_is_better"), "needs absolute and/or relative"),
        (dict(lower_bound=0.5, lower=0.4), r"unknown field\(s\) \['lower'\]"),
        (dict(metric="top5_accuracy", slice="clean", lower_bound=0.5), "top5_accuracy exists"),
    ],
)
def test_a_malformed_threshold_is_a_config_error_before_anything_runs(tmp_path, spec, match):
    config = _config(t=spec)
    with pytest.raises(stage.PipelineError, match=match):
        run_lib.check_config(config)
    workdir = str(tmp_path / "work")
    with pytest.raises(stage.PipelineError, match=match):
        run_lib.run_pipeline(config, workdir)
    assert not os.path.exists(workdir)  # nothing ran


@pytest.mark.parametrize(
    "module, arg",
    [
        (fashion_mnist_hetero, "quick"),
        (fashion_mnist_hetero, "smoke"),
        (fashion_mnist_hetero, "quick,rare_clean"),
        (fashion_mnist_hetero, "quick,reg_every"),
        (imdb_hetero, "smoke"),
        (cifar10_hetero, "smoke"),
    ],
)
def test_every_shipped_config_has_valid_thresholds(module, arg):
    config = module.get_config(arg)
    specs = blessing.thresholds(config)
    assert specs  # each states a blessing
    assert any("baseline" in s for s in specs.values())
