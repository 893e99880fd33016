"""The stage registry (pipeline.core.stage.REGISTRY) is the one place the stage graph is
written: fingerprints stay what they were, and pipeline/BUILD and the docs table
agree with it."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re

import pytest

import har_tf
from configs import fashion_mnist_hetero
from configs.studies import smoke
from pipeline import cli
from pipeline import run as run_lib
from pipeline.core import stage
from pipeline.study import config as study_config
from tests import harness

# Fingerprints computed at commit 0fb6071, before the registry (har_tf 0.1.0): the
# workdirs of a running study depend on them staying byte-identical.
FASHION_MNIST = {
    "quick": {
        "preprocess": "b99a7dc5800b5859fda645523eaadea4ca2219179399f1fbe9189a54b6f4f503",
        "pretrain": "915677a106649bc0e53ea9a564e125d0b05b48d62cf8e89569c361587ecb7a8c",
        "estimate_tau": "adb5d0b23e1084b15a75e8b02737c87e02871638cf6fabd562f994297a87c69e",
        "train": "239be865826bbb1cee374347b8fd79b6c309f635d2d66d7346fd49f80d01201e",
        "evaluate": "23a6818e3774cc8b1495ff95872544a39ab754f230fcb83c14c8fe70f51d5ae4",
        "export": "0fa6aedc1038f83fc44ae77194f81e41ddf21a5ae35b59b4905bd8de517c0784",
        "push": "4147501b3d5453ed7029eb35df3534d75868ca0280313b663255fb8e3a580095",
    },
    "smoke": {
        "preprocess": "fb23865b96cbdffa752f56c49bd3f9560cdbf35c29a1bbe0dd1bb0bfda4cd269",
        "pretrain": "f20b0c73ca334b068dde6abe09c6363ace302b5c43cbcc14c3d41f336226aca8",
        "estimate_tau": "bec2f8313acce93a93c4fb74ba8f4d82463799d52c7548844aa1ac8a3446ebf2",
        "train": "eea2def284b043989bbab61336f5215636d2aa19a3932dc7355b1764bafaf4e8",
        "evaluate": "1931e149981f37f352dfa02f2d010e938f2794a78aef935af703395b23a014b0",
        "export": "383e9df8a38900b7cd83a217c725e268fb021be8d82736b850d62be198d51b3b",
        "push": "ce2f0e135a631b786b23d8836e2367d8d28884848da5388ba443feda3d2351cd",
    },
}
# configs/studies/smoke.py per variant: (number of jobs, sha256 of every job's
# fingerprints as sorted JSON), each grid method's first lambda taken as selected.
SMOKE_STUDY = {
    "": (6, "04acec4bd0d07fc1792bf23b31240b269b5f2a64acc92bf8e250927b24ece279"),
    "all": (9, "ef2a94559b9937f2c8855999475d24bac2d0258d101705354ef75f7456432aa1"),
    # 2026-12-05: its cl_filter and cl_filter_har gained reweight="noise_rate" (on
    # purpose); with that field set back to "none" the digest is the former 94c841cd...
    "study2": (8, "10d900530699e4d24bab90c30eb5b2f4b0700decd4d864a037ba987a3913107f"),
}


@pytest.fixture
def version_010(monkeypatch):
    """The expected digests were made with har_tf 0.1.0; a version bump changes every
    fingerprint on purpose, so pin it."""
    monkeypatch.setattr(har_tf, "__version__", "0.1.0")


@pytest.mark.parametrize("variant", sorted(FASHION_MNIST))
def test_fingerprints_unchanged_for_the_fashion_mnist_config(variant, version_010):
    config = fashion_mnist_hetero.get_config(variant)
    assert stage.fingerprints(config) == FASHION_MNIST[variant]


@pytest.mark.parametrize("variant", sorted(SMOKE_STUDY))
def test_fingerprints_unchanged_for_every_smoke_study_job(variant, version_010):
    study = smoke.get_config(variant or None)
    selected = {n: float(m.lam_grid[0]) for n, m in study.methods.items() if tuple(m.lam_grid)}
    jobs = study_config.plan(study, selected)
    fps = {
        f"{j.setting}/{j.seed}/{j.method}/{j.lam}": stage.fingerprints(
            study_config.pipeline_config(study, j, harness.REPO)
        )
        for j in jobs
    }
    digest = hashlib.sha256(json.dumps(fps, sort_keys=True).encode()).hexdigest()
    assert (len(jobs), digest) == SMOKE_STUDY[variant]


def test_every_input_is_an_earlier_stage():
    # The order of REGISTRY is the order stages run: a stage reads only stages before it.
    for i, record in enumerate(stage.REGISTRY):
        for dep in record.inputs + record.tau_inputs:
            assert dep in stage.STAGES[:i], f"{record.name} reads {dep}, not an earlier stage"
    assert stage.upstream("train") == ("preprocess", "pretrain", "estimate_tau")
    assert stage.upstream("push") == stage.STAGES[:-1]


# The programs besides the stages that users run with `bazel run //pipeline:<name>`
# (the study's is //pipeline/study:run_study: a //pipeline:study file would stand where
# the runfiles need the package directory pipeline/study/).
ENTRY_POINTS = ("run", "serve")


def _build_binaries() -> list[str]:
    """The names in pipeline/BUILD's `for stage in [...]` list of module binaries."""
    with open(os.path.join(harness.REPO, "pipeline", "BUILD")) as f:
        text = f.read()
    found = re.search(r"for stage in \[(.*?)\]", text, re.DOTALL)
    assert found, "pipeline/BUILD has no `for stage in [...]` list of binaries"
    return re.findall(r'"(\w+)"', found.group(1))


def test_build_has_a_binary_for_every_stage_and_entry_point():
    binaries = _build_binaries()
    assert len(binaries) == len(set(binaries)), f"duplicate binaries: {binaries}"
    assert set(binaries) == {*stage.STAGES, *ENTRY_POINTS}
    for name in binaries:  # each is a program: `python -m pipeline.<name>`
        with open(os.path.join(harness.REPO, "pipeline", f"{name}.py")) as f:
            assert 'if __name__ == "__main__":' in f.read(), f"pipeline/{name}.py has no main"
    with open(os.path.join(harness.REPO, "pipeline", "study", "BUILD")) as f:
        assert 'module = "pipeline.study"' in f.read(), "pipeline/study/BUILD: no study binary"


def _docs_table() -> list[list[str]]:
    """The rows (stage, reads, writes) of docs/PIPELINE.md's table of stages."""
    with open(os.path.join(harness.REPO, "docs", "PIPELINE.md")) as f:
        text = f.read()
    section = text.split("## What each stage reads and writes", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # after header and rule


def test_the_docs_table_of_stages_matches_the_registry():
    rows = _docs_table()
    assert [row[0].split()[0] for row in rows] == list(stage.STAGES)
    for (_, reads, writes), record in zip(rows, stage.REGISTRY, strict=True):
        named = {s for s in stage.STAGES if re.search(rf"\b{s}\b", reads)}
        assert named == {*record.inputs, *record.tau_inputs}, f"{record.name} reads"
        for output in record.outputs:
            assert f"`{output}`" in writes, f"{record.name} writes {output}"


def test_every_stage_run_takes_its_options_and_each_option_has_a_flag():
    for record in stage.REGISTRY:
        params = inspect.signature(run_lib.STAGE_RUNS[record.name]).parameters
        assert list(params)[:2] == ["config", "workdir"], record.name
        assert set(params) - {"config", "workdir"} == set(record.options), record.name
        assert all(o in cli.OPTION_FLAGS for o in record.options), record.name
        assert record.forcing_option in ("", *record.options), record.name
