"""A complete stage is trusted only if its outputs exist and parse (finding 3 of
issue 18); every unreadable artifact names its file and the stage that writes it.

The pipeline's orchestration runs here with fake stages (each writes its declared
outputs through stage.stage_output, as the real ones do), so that it takes
milliseconds; the checks read only what stage_output records.
"""

import os

import pytest

from configs import fashion_mnist_hetero
from pipeline import cli
from pipeline import run as run_lib
from pipeline.core import stage
from pipeline.data import datasets


def _fake(name, calls):
    def run(config, workdir, **_):
        calls.append(name)
        with stage.stage_output(workdir, name, config) as out:
            for rel in stage.DECLARED_OUTPUTS[name]:
                if rel.endswith(".json"):
                    stage.write_json(os.path.join(out, rel), {"stage": name, "tau": [0.5] * 10})
                else:
                    with open(os.path.join(out, rel), "w") as f:
                        f.write(f"{name} output\n")
            os.makedirs(os.path.join(out, "har"))
            with open(os.path.join(out, "har", "weights.bin"), "wb") as f:
                f.write(b"\0" * 100)

    return run


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """Runs the whole (fake) pipeline once; returns (workdir, calls, rerun)."""
    calls = []
    fakes = {name: _fake(name, calls) for name in stage.STAGES}
    monkeypatch.setattr(run_lib, "STAGE_RUNS", fakes)
    config = fashion_mnist_hetero.get_config("smoke")
    workdir = str(tmp_path / "work")
    run_lib.run_pipeline(config, workdir)
    assert calls == list(stage.STAGES)
    calls.clear()

    def rerun():
        run_lib.run_pipeline(config, workdir)
        return list(calls)

    return workdir, calls, rerun


def test_an_intact_workdir_is_skipped_entirely(pipeline):
    workdir, _, rerun = pipeline
    assert rerun() == []
    meta = stage.read_json(os.path.join(workdir, "estimate_tau", stage.METADATA))
    assert meta["files"] == {
        "tau.json": os.path.getsize(os.path.join(workdir, "estimate_tau", "tau.json")),
        "har/weights.bin": 100,
    }


def test_a_deleted_tau_json_is_reported_and_rerun(pipeline, capsys):
    workdir, _, rerun = pipeline
    os.remove(os.path.join(workdir, "estimate_tau", "tau.json"))
    assert stage.state(workdir, "estimate_tau", "any") == "incomplete"
    with pytest.raises(
        stage.PipelineError,
        match=r"^stage estimate_tau is incomplete: tau.json is missing; rerun with "
        r"--from_stage=estimate_tau",
    ):
        stage.require(workdir, "estimate_tau")
    capsys.readouterr()
    assert rerun() == ["estimate_tau", "train", "evaluate", "export", "push"]
    assert "stage estimate_tau is incomplete: tau.json is missing" in capsys.readouterr().err
    assert stage.why_incomplete(workdir, "estimate_tau") is None
    assert not [d for d in os.listdir(workdir) if ".stale-" in d]  # the old one is gone


def test_a_stage_made_before_sizes_were_recorded_is_checked_on_its_declared_outputs(pipeline):
    workdir, _, rerun = pipeline
    meta_path = os.path.join(workdir, "estimate_tau", stage.METADATA)
    meta = stage.read_json(meta_path)
    del meta["files"]
    stage.write_json(meta_path, meta)
    assert stage.why_incomplete(workdir, "estimate_tau") is None
    os.remove(os.path.join(workdir, "estimate_tau", "tau.json"))
    assert stage.why_incomplete(workdir, "estimate_tau") == "tau.json is missing"
    assert rerun() == ["estimate_tau", "train", "evaluate", "export", "push"]


def test_a_shortened_file_is_caught_by_its_recorded_size(pipeline):
    workdir, _, rerun = pipeline
    with open(os.path.join(workdir, "train", "har", "weights.bin"), "wb") as f:
        f.write(b"\0" * 40)
    assert stage.why_incomplete(workdir, "train") == (
        "har/weights.bin has 40 bytes, metadata.json records 100"
    )
    assert rerun() == ["train", "evaluate", "export", "push"]


def _truncate(path):
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])


def test_a_truncated_manifest_names_the_file_and_its_stage(pipeline):
    workdir, _, rerun = pipeline
    manifest = os.path.join(workdir, "preprocess", "manifest.json")
    _truncate(manifest)
    with pytest.raises(
        stage.PipelineError,
        match=r"^stage preprocess is incomplete: manifest.json has \d+ bytes, metadata.json "
        r"records \d+; rerun with --from_stage=preprocess",
    ):
        datasets.load_manifest(workdir)
    assert rerun() == list(stage.STAGES)


def test_a_truncated_manifest_without_recorded_sizes_is_invalid_json(pipeline):
    workdir, _, _ = pipeline
    meta_path = os.path.join(workdir, "preprocess", stage.METADATA)
    meta = stage.read_json(meta_path)
    del meta["files"]
    stage.write_json(meta_path, meta)
    _truncate(os.path.join(workdir, "preprocess", "manifest.json"))
    with pytest.raises(
        stage.PipelineError,
        match=r"^stage preprocess is incomplete: manifest.json is not valid JSON \(",
    ):
        datasets.load_manifest(workdir)


def test_a_truncated_metadata_json_makes_the_stage_incomplete(pipeline):
    workdir, _, rerun = pipeline
    _truncate(os.path.join(workdir, "evaluate", stage.METADATA))
    assert stage.why_incomplete(workdir, "evaluate").startswith("metadata.json is unreadable")
    assert rerun() == ["evaluate", "export", "push"]


@pytest.mark.parametrize(
    "rel, writer",
    [
        ("preprocess/manifest.json", "preprocess"),
        ("train.partial/erm/history.json", "train"),
        ("estimate_tau/sub/tau.json", "estimate_tau"),
    ],
)
def test_read_json_names_the_file_and_the_stage_that_writes_it(tmp_path, rel, writer):
    path = tmp_path / "work" / rel
    path.parent.mkdir(parents=True)
    path.write_text('{"tau": [0.1, ')
    with pytest.raises(stage.PipelineError) as e:
        stage.read_json(str(path))
    assert str(e.value).startswith(f"{path} is unreadable (")
    assert str(e.value).endswith(f"stage {writer} writes it: rerun with --from_stage={writer}")
    path.unlink()
    with pytest.raises(stage.PipelineError, match=f"{path} is missing; stage {writer} writes it"):
        stage.read_json(str(path))


def test_a_stage_run_alone_refuses_an_incomplete_input(pipeline, capsys):
    workdir, calls, _ = pipeline
    os.remove(os.path.join(workdir, "estimate_tau", "tau.json"))
    config = fashion_mnist_hetero.get_config("smoke")
    with pytest.raises(SystemExit) as e:
        cli.run_stage_main("train", run_lib.STAGE_RUNS["train"], config, workdir)
    assert e.value.code == 1
    assert "stage estimate_tau is incomplete: tau.json is missing" in capsys.readouterr().err
    assert calls == []


def test_ensure_skips_current_refuses_or_replaces_stale_and_restores_on_failure(tmp_path):
    workdir = str(tmp_path)
    config = fashion_mnist_hetero.get_config("smoke")
    other = fashion_mnist_hetero.get_config("smoke")
    other.export.push_destination = "elsewhere"  # push's only section: push is stale
    fp, other_fp = stage.fingerprints(config)["push"], stage.fingerprints(other)["push"]
    found, calls = [], []

    def make(cfg, text):
        def run():
            calls.append(text)
            with stage.stage_output(workdir, "push", cfg) as out:
                stage.write_json(os.path.join(out, "push.json"), {"made": text})

        return run

    def made():
        return stage.read_json(os.path.join(workdir, "push", "push.json"))["made"]

    assert stage.ensure(workdir, "push", fp, make(config, "first"), on_run=found.append)
    assert not stage.ensure(workdir, "push", fp, make(config, "again"), on_run=found.append)
    assert (found, calls, made()) == (["missing"], ["first"], "first")
    with pytest.raises(stage.PipelineError, match="'push' .* is complete but stale"):
        stage.ensure(workdir, "push", other_fp, make(other, "x"), refuse_stale=True)

    def fails():
        raise stage.PipelineError("boom")

    with pytest.raises(stage.PipelineError, match="boom"):
        stage.ensure(workdir, "push", other_fp, fails)
    assert made() == "first" and stage.state(workdir, "push", fp) == "current"  # restored
    assert stage.ensure(workdir, "push", other_fp, make(other, "second"), on_run=found.append)
    assert (found[-1], made(), stage.state(workdir, "push", other_fp)) == (
        "stale",
        "second",
        "current",
    )
    assert not [d for d in os.listdir(workdir) if ".stale-" in d]
    # An incomplete stage (an output deleted) is set aside and made anew, too.
    os.remove(os.path.join(workdir, "push", "push.json"))
    assert stage.ensure(workdir, "push", other_fp, make(other, "third"), on_run=found.append)
    assert (found[-1], made()) == ("incomplete", "third")
