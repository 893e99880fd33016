"""Every numeric config field is range-checked before the first stage (finding 2 of
issue 18): the field's dotted name in the message, exit 1, no stage directory."""

import math
import os

import pytest

from configs import fashion_mnist_hetero
from pipeline import cli, config_check, config_ranges, stage
from pipeline import run as run_lib
from tests import harness

CONFIG = harness.config()

# (dotted field, bad value, what the message says): the override a user would pass.
BAD = [
    ("train.epochs", 0, ">= 1, got 0"),
    ("train.epochs", -1, ">= 1, got -1"),
    ("pretrain.epochs", 0, ">= 1, got 0"),
    ("train.batch_size", 0, ">= 1, got 0"),
    ("pretrain.batch_size", -8, ">= 1, got -8"),
    ("eval.batch_size", 0, ">= 1, got 0"),
    ("train.learning_rate", 0.0, "> 0, got 0.0"),
    ("pretrain.learning_rate", -0.1, "> 0, got -0.1"),
    ("train.learning_rate", math.nan, "> 0, got nan"),
    ("train.momentum", 1.0, "in [0, 1), got 1.0"),
    ("train.weight_decay", -1e-4, ">= 0, got -0.0001"),
    ("train.lr_drop_factor", 0.0, "in (0, 1], got 0.0"),
    ("train.lr_drop_epochs", (0,), ">= 1, got (0,)"),
    ("train.shuffle_buffer", 0, ">= 1, got 0"),
    ("train.runs.har.lam", -5.0, ">= 0, got -5.0"),
    ("train.runs.erm.lam", -1.0, ">= 0, got -1.0"),
    ("train.runs.har.reg_every", 0, ">= 1, got 0"),
    ("train.drw_beta", 1.0, "in [0, 1), got 1.0"),
    ("train.drw_start_epoch", -1, ">= 0, got -1"),
    ("data.noise.flip_prob", 1.5, "in [0, 1], got 1.5"),
    ("data.noise.flip_prob", -0.1, "in [0, 1], got -0.1"),
    ("data.noise.rate", 2.0, "in [0, 1], got 2.0"),
    ("data.imbalance.ratio", 0.5, ">= 1, got 0.5"),
    ("data.csv.test_fraction", 0.0, "in (0, 1), got 0.0"),
    ("data.csv.test_fraction", 1.0, "in (0, 1), got 1.0"),
    ("data.num_classes", 1, ">= 2, got 1"),
    ("data.num_shards", 0, ">= 1, got 0"),
    ("data.chunk_size", 0, ">= 1, got 0"),
    ("data.limit_train", -1, ">= 0, got -1"),
    ("data.std", (0.0,), "> 0, got (0.0,)"),
    ("model.widths", (4, 0, 8), ">= 1, got (4, 0, 8)"),
    ("model.blocks_per_stage", 0, ">= 1, got 0"),
    ("tau.uncertainty_exponent", -0.6, ">= 0, got -0.6"),
    ("tau.error_floor", 1.5, "in [0, 1], got 1.5"),
    ("export.version", 0, ">= 1, got 0"),
    ("seed", -1, ">= 0, got -1"),
]


def _set(config, field, value):
    *path, key = field.split(".")
    parent = config
    for part in path:
        parent = parent[part]
    parent[key] = value


@pytest.mark.parametrize("field, value, says", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_a_bad_value_is_refused_before_anything_runs(tmp_path, field, value, says):
    config = fashion_mnist_hetero.get_config("smoke")
    _set(config, field, value)
    workdir = str(tmp_path / "work")
    with pytest.raises(stage.PipelineError) as e:
        run_lib.run_pipeline(config, workdir)
    assert str(e.value).startswith(f"config.{field} must be {says}"), str(e.value)
    assert f"--config.{field}=" in str(e.value)  # the fix
    assert not os.path.exists(workdir)  # no stage directory, not even the workdir


def test_every_shipped_config_is_in_range():
    from configs import cifar10_hetero, imdb_hetero

    for variant in ("full", "quick", "smoke", "quick,rare_clean", "quick,reg_every"):
        config_ranges.check(fashion_mnist_hetero.get_config(variant))
    config_ranges.check(cifar10_hetero.get_config())
    config_ranges.check(imdb_hetero.get_config())


def test_a_stage_run_alone_refuses_too(tmp_path, capsys):
    config = fashion_mnist_hetero.get_config("smoke")
    config.train.batch_size = 0
    with pytest.raises(SystemExit) as e:
        cli.run_stage_main(
            "train", None, config, str(tmp_path / "w"), check=config_check.check_config
        )
    assert e.value.code == 1
    assert "config.train.batch_size must be >= 1, got 0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, says",
    [
        ("--config.train.epochs=0", "config.train.epochs must be >= 1, got 0"),
        ("--config.train.batch_size=0", "config.train.batch_size must be >= 1, got 0"),
        ("--config.train.runs.har.lam=-5", "config.train.runs.har.lam must be >= 0, got -5"),
    ],
)
def test_the_cli_refuses_a_bad_value(tmp_path, override, says):
    workdir = tmp_path / "work"
    result = harness.run_module(
        "pipeline.run", f"--config={CONFIG}", override, f"--workdir={workdir}"
    )
    assert result.returncode == 1
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()
