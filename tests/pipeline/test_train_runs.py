"""config.train.runs: what each run asks of the train stage (regularizer, reg_every,
checkpoint_blocks)."""

import pytest

from configs import common, fashion_mnist_hetero
from pipeline import modeling, train
from pipeline.stage import PipelineError


def test_reg_every_variant_trains_exact_and_approximate_har():
    config = fashion_mnist_hetero.get_config("quick,reg_every")
    runs = config.train.runs
    assert list(runs) == ["har", "har_every2", "har_every4"]
    assert [runs[r].reg_every for r in runs] == [1, 2, 4]
    assert {runs[r].lam for r in runs} == {10.0} and config.export.run == "har"


def test_a_run_reg_every_reaches_the_model():
    config = fashion_mnist_hetero.get_config("smoke")
    model = modeling.build_har_model(config, config.train, lam=1.0, seed=0, reg_every=3)
    assert model.reg_every == 3


def test_checkpoint_blocks_reaches_regularized_models_only():
    config = fashion_mnist_hetero.get_config("smoke")
    assert config.train.checkpoint_blocks is False
    assert modeling.build_har_model(config, config.train, lam=1.0, seed=0).checkpoint_layers is None
    config.train.checkpoint_blocks = True
    har = modeling.build_har_model(config, config.train, lam=1.0, seed=0)
    assert har.checkpoint_layers == ["stage1_block1_out", "stage2_block1_out"]
    erm = modeling.build_har_model(config, config.train, lam=0.0, seed=0)
    assert erm.checkpoint_layers is None  # an ERM step has nothing to recompute
    config.model.widths = (4,)  # one stage of one block: nothing to cut between
    with pytest.raises(PipelineError, match="at least two residual blocks"):
        modeling.build_har_model(config, config.train, lam=1.0, seed=0)
    config.model.name, config.data.modality = "bilstm", "text"
    with pytest.raises(PipelineError, match="checkpoint_blocks recomputes residual blocks"):
        modeling.build_har_model(config, config.train, lam=1.0, seed=0)


@pytest.mark.parametrize(
    "run, match",
    [
        (common.run(regularizer="har", lam=1.0, reg_every=0), "reg_every must be >= 1"),
        (common.run(regularizer="har", lam=0.0), "a har run needs lam > 0"),
        (common.run(regularizer="l2", lam=1.0), "regularizer 'l2' is not one of"),
    ],
)
def test_bad_runs_are_named(run, match):
    with pytest.raises(PipelineError, match=f"run 'x': {match}"):
        train.validate_runs({"x": run})
