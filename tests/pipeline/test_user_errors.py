"""Expected user errors (finding 6 of issue 18): one line naming the problem and the
fix, exit status 1, no traceback unless --verbose, and nothing left behind."""

import os

import pytest

from configs import fashion_mnist_hetero
from pipeline import cli
from pipeline import run as run_lib
from pipeline.core import stage, workdir_lock
from tests import harness

CONFIG = harness.config()


def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "work"
    path.write_text("my notes")
    with pytest.raises(stage.PipelineError, match=r"workdir '.*work' is not a directory"):
        run_lib.run_pipeline(fashion_mnist_hetero.get_config("smoke"), str(path))
    assert path.read_text() == "my notes"
    with pytest.raises(stage.PipelineError, match=r"workdir '.*work/sub' is not a directory"):
        run_lib.run_pipeline(fashion_mnist_hetero.get_config("smoke"), str(path / "sub"))


def test_a_read_only_workdir_is_a_clear_error(tmp_path, monkeypatch):
    # As root (the CI container) chmod does not stop writes: the check is os.access.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(stage.PipelineError, match=r"workdir '.*' is not writable \(read-only\)"):
        with workdir_lock.held(str(tmp_path)):
            pass
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_chmod_read_only_workdir_is_a_clear_error(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(stage.PipelineError, match="is not writable"):
            run_lib.run_pipeline(fashion_mnist_hetero.get_config("smoke"), str(tmp_path))
    finally:
        os.chmod(tmp_path, 0o755)


def test_a_stage_alone_on_a_missing_workdir_creates_nothing(tmp_path):
    workdir = tmp_path / "typo"
    ran = []
    with pytest.raises(stage.PipelineError, match="stage 'preprocess' has not completed"):
        cli.run_stage_main(
            "train",
            lambda config, wd: ran.append(wd),
            fashion_mnist_hetero.get_config("smoke"),
            str(workdir),
            verbose=True,
        )
    assert ran == [] and not workdir.exists()


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_missing_config_file_is_one_line_and_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "work"
    result = harness.run_module(
        "pipeline.run", "--config=configs/nope.py:smoke", f"--workdir={workdir}"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert _error_lines(result.stderr) == [
        "error: config file 'configs/nope.py' does not exist; pass an existing file as "
        "--config=path/to/config.py[:variant]"
    ]
    assert not workdir.exists()


@pytest.mark.slow
def test_a_workdir_that_is_a_file_through_a_stage_cli(tmp_path):
    path = tmp_path / "work"
    path.write_text("my notes")
    result = harness.run_module("pipeline.preprocess", f"--config={CONFIG}", f"--workdir={path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert line.startswith(f"error: preprocess: workdir '{path}' is not a directory")
    assert path.read_text() == "my notes"


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, override, error",
    [
        (
            CONFIG.replace(":smoke", ":smok"),
            "--config.seed=1",
            "error: ValueError: unknown variant 'smok'; expected one of full, quick, smoke",
        ),
        (
            CONFIG,
            "--config.train.epoch=3",
            "error: --config.train.epoch=3: the config has no field 'epoch' "
            '(did you mean "epochs"?)',
        ),
        (
            CONFIG,
            "--config.trian.epochs=3",
            "error: --config.trian.epochs=3: the config has no field 'trian' "
            '(did you mean "train"?)',
        ),
    ],
)
def test_a_bad_config_flag_is_one_line(tmp_path, config, override, error):
    workdir = tmp_path / "work"
    result = harness.run_module(
        "pipeline.train", f"--config={config}", override, f"--workdir={workdir}"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "FATAL" not in result.stderr
    assert _error_lines(result.stderr) == [error]
    assert not workdir.exists()


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path):
    workdir = tmp_path / "work"
    args = (f"--config={CONFIG}", "--config.train.epochs=0", f"--workdir={workdir}")
    result = harness.run_module("pipeline.run", *args, "--verbose")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "config.train.epochs must be in [1, 10000], got 0" in result.stderr
    assert not workdir.exists()
