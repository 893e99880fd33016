"""The stage binaries (//pipeline:<stage>) run their module as `python -m` does.

Each binary's generated main runs `pipeline.<stage>` as __main__; a stage defines its
flags only then, so the help text shows whether it did. Runs under `bazel test` only
(the binaries are its data).
"""

import os
import subprocess

import pytest

STAGES = ["preprocess", "pretrain", "estimate_tau", "train", "evaluate", "export", "serve"]


def _help(stage: str) -> str:
    binary = os.path.join("pipeline", *stage.split("/"))
    if not os.path.exists(binary):
        pytest.skip(f"{binary} not built: run under bazel test //bazel:binaries_test")
    # absl prints the help text and exits 1 for --helpshort.
    result = subprocess.run([binary, "--helpshort"], capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr


def test_run_binary_runs_pipeline_run_as_main():
    text = _help("run")
    assert "pipeline/run.py:" in text and "--from_stage" in text, text[-2000:]


@pytest.mark.slow
def test_study_binary_runs_the_study_runner_as_main():
    # python -m pipeline.study runs pipeline/study/__main__.py, which runs the runner.
    text = _help("study/run_study")
    assert "pipeline/study/runner.py:" in text and "--max_jobs" in text, text[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_stage_binary_runs_its_stage_as_main(stage):
    text = _help(stage)
    assert f"pipeline/{stage}.py:" in text and "--workdir" in text, text[-2000:]
