"""Fingerprints, stale stages, --force / --from_stage, and resuming after a kill."""

import functools
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import fashion_mnist_hetero
from pipeline import run as run_lib
from pipeline.core import stage, workdir_lock
from pipeline.training import epoch_eval, modeling
from tests import harness
from tests.pipeline import idx_fixtures

CONFIG = harness.config()
UPSTREAM = ("preprocess", "pretrain", "estimate_tau")
DOWNSTREAM = ("train", "evaluate", "export", "push")


def _args(workdir, idx_dir, *overrides):
    return [
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={idx_dir}",
        "--quiet",
        *overrides,
    ]


def _run(module, workdir, idx_dir, *overrides):
    return harness.run_module(
        module, *_args(workdir, idx_dir, *overrides), timeout=900, keep_data_dir=False
    )


def _pipeline(workdir, idx_dir, *overrides):
    result = _run("pipeline.run", workdir, idx_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _fingerprints(workdir):
    return {n: stage.stored_fingerprint(workdir, n) for n in stage.STAGES}


# ----------------------------------------------------------------------------------
# Fast: fingerprints and stage directories, in process


def _config(**train):
    config = fashion_mnist_hetero.get_config("smoke")
    for k, v in train.items():
        setattr(config.train, k, v)
    return config


def test_fingerprint_depends_on_the_stage_sections_and_inputs():
    base = stage.fingerprints(_config())
    assert set(base) == set(stage.STAGES)
    assert all(len(fp) == 64 for fp in base.values())
    assert stage.fingerprints(_config()) == base  # deterministic
    more_epochs = stage.fingerprints(_config(epochs=2))
    for name in UPSTREAM:
        assert more_epochs[name] == base[name], name
    for name in DOWNSTREAM:
        assert more_epochs[name] != base[name], name
    # What is printed is not part of any fingerprint.
    assert stage.fingerprints(_config(verbose=2)) == base
    # tau feeds estimate_tau and, through it, train (a HAR run) and later stages.
    config = _config()
    config.tau.error_floor = 0.01
    tau_changed = stage.fingerprints(config)
    assert [n for n in stage.STAGES if tau_changed[n] != base[n]] == [
        "estimate_tau",
        "train",
        "evaluate",
        "export",
        "push",
    ]
    config = _config()
    config.seed = 1
    assert all(v != base[k] for k, v in stage.fingerprints(config).items())


def test_a_changed_evaluate_makes_export_stale():
    """export writes evaluate's metrics into its model card: a rerun evaluate (here,
    other groups) must not leave the card of the earlier one."""
    base = stage.fingerprints(_config())
    config = _config()
    config.eval.groups.clean = (1, 3)
    changed = stage.fingerprints(config)
    assert [n for n in stage.STAGES if changed[n] != base[n]] == ["evaluate", "export", "push"]


def test_thresholds_change_evaluate_and_destination_only_push():
    """A threshold is part of evaluate (its blessing.json); where the export is pushed
    changes neither the export nor anything before it."""
    base = stage.fingerprints(_config())
    config = _config()
    config.eval.thresholds.overall_floor.lower_bound = 0.6
    changed = stage.fingerprints(config)
    assert [n for n in stage.STAGES if changed[n] != base[n]] == ["evaluate", "export", "push"]
    config = _config()
    config.export.push_destination = "serving/har"
    changed = stage.fingerprints(config)
    assert [n for n in stage.STAGES if changed[n] != base[n]] == ["push"]


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_is_read_once_into_the_config(monkeypatch, quiet):
    """--quiet reaches training as the sections' verbose = 0, set by the main from its
    flags (cli.config_from_flags); it changes no fingerprint."""
    from pipeline import cli

    config = _config(verbose=1)
    config.pretrain.verbose = 2
    base = stage.fingerprints(config)
    flag_values = type("Flags", (), {"config": config, "quiet": quiet})
    monkeypatch.setattr(cli.flags, "FLAGS", flag_values)
    got = cli.config_from_flags()
    assert (got.train.verbose, got.pretrain.verbose) == ((0, 0) if quiet else (1, 2))
    assert stage.fingerprints(got) == base


def test_fingerprint_of_an_erm_only_train_ignores_tau():
    config = _config()
    with config.unlocked():
        del config.train.runs["har"]
    base = stage.fingerprints(config)
    config.tau.error_floor = 0.01
    changed = stage.fingerprints(config)
    assert changed["train"] == base["train"]
    assert changed["estimate_tau"] != base["estimate_tau"]


def test_a_kill_while_a_stage_completes_leaves_it_resumable_or_complete(tmp_path, monkeypatch):
    """Killed after its body returned, a stage is never discarded: before the rename its
    .partial still resumes (with its checkpoint); after it, the stage is complete."""
    workdir, config = str(tmp_path), _config()

    def killed(*args):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(os, "rename", killed)
        with pytest.raises(KeyboardInterrupt):
            with stage.stage_output(workdir, "train", config, resume=True) as out:
                open(os.path.join(out, "ckpt"), "w").close()
    with stage.stage_output(workdir, "train", config, resume=True) as out:
        assert os.path.isfile(os.path.join(out, "ckpt"))  # resumed, not cleared
    meta = stage.read_json(os.path.join(workdir, "train", stage.METADATA))
    assert len(meta["earlier_attempts"]) == 1
    shutil.rmtree(os.path.join(workdir, "train"))
    with monkeypatch.context() as m:
        m.setattr(os, "remove", killed)
        with pytest.raises(KeyboardInterrupt):
            with stage.stage_output(workdir, "train", config) as out:
                open(os.path.join(out, "ckpt"), "w").close()
    fps = stage.fingerprints(config)
    assert stage.state(workdir, "train", fps["train"]) == "current"
    assert stage.read_json(os.path.join(workdir, "train", stage.METADATA))["earlier_attempts"] == []


def test_stage_output_records_fingerprint_and_clears_or_resumes(tmp_path):
    workdir = str(tmp_path)
    config = _config()
    fps = stage.fingerprints(config)
    partial = os.path.join(workdir, "train.partial")
    with pytest.raises(RuntimeError):
        with stage.stage_output(workdir, "train", config, resume=True) as out:
            open(os.path.join(out, "ckpt"), "w").close()
            raise RuntimeError("killed")
    assert os.path.isfile(os.path.join(partial, "ckpt"))
    # A non-resuming stage clears what the earlier attempt left...
    with pytest.raises(RuntimeError):
        with stage.stage_output(workdir, "train", config) as out:
            assert sorted(os.listdir(out)) == [stage.PARTIAL_ATTEMPTS, stage.PARTIAL_FINGERPRINT]
            open(os.path.join(out, "ckpt"), "w").close()
            raise RuntimeError("killed")
    # ... a resuming one keeps it.
    with stage.stage_output(workdir, "train", config, resume=True) as out:
        assert os.path.isfile(os.path.join(out, "ckpt"))
    assert stage.state(workdir, "train", fps["train"]) == "current"
    assert stage.stored_fingerprint(workdir, "train") == fps["train"]
    assert not os.path.exists(partial)
    assert not os.path.exists(os.path.join(workdir, "train", stage.PARTIAL_FINGERPRINT))
    assert sorted(os.listdir(os.path.join(workdir, "train"))) == ["ckpt", stage.METADATA]
    meta = stage.read_json(os.path.join(workdir, "train", stage.METADATA))
    assert meta["started"] <= meta["finished"] and isinstance(meta["argv"], list)
    # The cleared attempt is gone; the killed one the stage resumed from is recorded.
    (earlier,) = meta["earlier_attempts"]
    assert earlier["started"] < meta["started"] and earlier["code"] == meta["code"]
    assert set(meta["files"]) == {"ckpt"}
    # The fields the fingerprint read, as config_section gives them.
    assert meta["config"]["train"]["epochs"] == config.train.epochs
    # (A field at its NEUTRAL_DEFAULTS value is left out, as if it did not exist.)
    neutral = {
        f
        for f, v in stage.NEUTRAL_DEFAULTS.items()
        if "*" not in f  # a run's fields ("train.runs.*.drop"), inside the train section
        and functools.reduce(lambda c, part: c[part], f.split("."), config) == v
    }
    assert set(meta["config"]) == set(stage.SECTIONS["train"]) - neutral
    assert "eval.per_epoch_every" in neutral
    assert stage.state(workdir, "train", stage.fingerprints(_config(epochs=2))["train"]) == (
        "stale"
    )


def test_resume_never_continues_a_partial_made_for_another_config(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(RuntimeError):
        with stage.stage_output(workdir, "train", _config(), resume=True) as out:
            open(os.path.join(out, "ckpt"), "w").close()
            raise RuntimeError("killed")
    with stage.stage_output(workdir, "train", _config(epochs=2), resume=True) as out:
        assert not os.path.exists(os.path.join(out, "ckpt"))


def test_set_aside_and_restore(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "train"))
    aside = stage.set_aside(workdir, "train")
    assert os.path.basename(aside).startswith("train.stale-")
    assert not os.path.exists(os.path.join(workdir, "train"))
    stage.restore(workdir, "train", aside)
    assert os.path.isdir(os.path.join(workdir, "train")) and not os.path.exists(aside)
    aside = stage.set_aside(workdir, "train")
    stage.discard_stale(workdir, "train")
    assert os.listdir(workdir) == []
    assert stage.set_aside(workdir, "train") is None
    os.makedirs(os.path.join(workdir, "train.partial", "checkpoints"))
    stage.clear_partial(workdir, "train")
    assert os.listdir(workdir) == []


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("export.run", "hra", r"export.run='hra' names no run of config.train.runs"),
        ("eval.groups.clean", (1, 10), r"eval group 'clean' names classes \[10\] outside"),
        ("train.optimizer", "sgdd", r"config.train.optimizer: unknown optimizer 'sgdd'"),
        (
            "eval.thresholds.noisy_rare_vs_erm.baseline",
            "ermm",
            r"thresholds.noisy_rare_vs_erm.baseline: 'ermm' names no run of config.train.runs",
        ),
        (
            "eval.thresholds.overall_floor.slice",
            "noisy_rear",
            r"thresholds.overall_floor.slice: unknown 'noisy_rear'",
        ),
    ],
)
def test_the_whole_config_is_checked_before_the_first_stage(tmp_path, field, value, match):
    config = _config()
    section, key = field.rsplit(".", 1)
    parent = config
    for part in section.split("."):
        parent = parent[part]
    parent[key] = value
    workdir = str(tmp_path / "work")
    with pytest.raises(stage.PipelineError, match=match):
        run_lib.run_pipeline(config, workdir)
    assert not os.path.exists(workdir)  # nothing ran


def test_unknown_from_stage_is_a_clear_error(tmp_path):
    with pytest.raises(stage.PipelineError, match="unknown --from_stage='trian'; stages: pre"):
        run_lib.run_pipeline(_config(), str(tmp_path), from_stage="trian")
    assert os.listdir(tmp_path) == []


def _fake_stages(monkeypatch):
    """Replaces every stage run_pipeline calls by one that makes its declared outputs
    through stage.stage_output (as the real stages do, resuming what .partial holds).
    Returns the calls: (stage, whether it found .partial to resume from)."""
    calls = []

    def fake(name):
        def run_stage(config, workdir, **kwargs):
            calls.append((name, os.path.isdir(os.path.join(workdir, f"{name}.partial"))))
            with stage.stage_output(workdir, name, config, resume=True) as out:
                for rel in stage.DECLARED_OUTPUTS[name]:
                    with open(os.path.join(out, rel), "w") as f:
                        f.write("{}")

        return run_stage

    for name in stage.STAGES:
        monkeypatch.setitem(run_lib.STAGE_RUNS, name, fake(name))
    return calls


def _ran(calls):
    names = [name for name, _ in calls]
    calls.clear()
    return names


def test_rerun_force_and_from_stage_run_what_they_name(tmp_path, monkeypatch):
    """Which stages pipeline.run runs, and whether from scratch, with the stages faked
    (the real pipeline: test_changed_config_reruns_downstream_only)."""
    calls = _fake_stages(monkeypatch)
    workdir = str(tmp_path)
    run_lib.run_pipeline(_config(), workdir)
    assert _ran(calls) == list(stage.STAGES)
    run_lib.run_pipeline(_config(), workdir)
    assert _ran(calls) == []
    run_lib.run_pipeline(_config(epochs=2), workdir)
    assert _ran(calls) == list(DOWNSTREAM)
    run_lib.run_pipeline(_config(epochs=2), workdir, from_stage="evaluate")
    assert _ran(calls) == ["evaluate", "export", "push"]
    run_lib.run_pipeline(_config(epochs=2), workdir, force_push=True)
    assert _ran(calls) == ["push"]
    run_lib.run_pipeline(_config(epochs=2), workdir, force=True)
    assert _ran(calls) == list(stage.STAGES)
    # Nothing set aside or left partial.
    assert set(os.listdir(workdir)) == {*stage.STAGES, workdir_lock.LOCK_FILE}

    # What an interrupted train left is resumed by a plain rerun, and cleared first by
    # one that names the stage (--from_stage, --force): those start afresh.
    def interrupted_train():
        shutil.rmtree(os.path.join(workdir, "train"))
        partial = os.path.join(workdir, "train.partial")
        os.makedirs(partial)
        with open(os.path.join(partial, stage.PARTIAL_FINGERPRINT), "w") as f:
            f.write(stage.fingerprints(_config(epochs=2))["train"])

    interrupted_train()
    run_lib.run_pipeline(_config(epochs=2), workdir)
    assert calls[0] == ("train", True)
    _ran(calls)
    for kwargs in ({"from_stage": "train"}, {"force": True}):
        interrupted_train()
        run_lib.run_pipeline(_config(epochs=2), workdir, **kwargs)
        assert ("train", False) in calls, kwargs
        _ran(calls)


# ----------------------------------------------------------------------------------
# Slow: the pipeline as a program


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    idx_fixtures.write_dataset(directory, num_train=1500, num_test=300)
    return str(directory)


# The slow tests share one complete pipeline (BASE), run once with Keras's progress
# printed; each test that changes a workdir works on a copy of it.
BASE = ("--config.train.epochs=4",)


@pytest.fixture(scope="module")
def completed(tmp_path_factory, idx_dir):
    """(workdir, stdout) of one complete pipeline.run of BASE; read only."""
    workdir = str(tmp_path_factory.mktemp("completed") / "work")
    result = _pipeline(workdir, idx_dir, *BASE, "--config.train.verbose=1", "--noquiet")
    return workdir, result.stdout


def _copy_of(completed, tmp_path):
    workdir = str(tmp_path / "work")
    shutil.copytree(completed[0], workdir, symlinks=True)
    return workdir


@pytest.mark.slow
def test_changed_config_reruns_downstream_only(tmp_path, completed, idx_dir):
    workdir = _copy_of(completed, tmp_path)
    first = _fingerprints(workdir)
    assert all(first.values())

    result = _pipeline(workdir, idx_dir, "--config.train.epochs=2")
    for name in UPSTREAM:
        assert f"== {name}: complete, skipped" in result.stdout
    for name in DOWNSTREAM:
        assert f"== {name}: stale, rerunning" in result.stdout
    second = _fingerprints(workdir)
    assert [n for n in stage.STAGES if first[n] != second[n]] == list(DOWNSTREAM)
    history = stage.read_json(os.path.join(workdir, "train", "har", "history.json"))
    assert len(history["loss"]) == 2
    assert not glob.glob(os.path.join(workdir, "*.stale-*"))
    assert not glob.glob(os.path.join(workdir, "*.partial"))
    # TensorBoard logs for each training run (tf.summary needs the package).
    if modeling.tensorboard_available():
        for run in ("train/erm", "train/har", "pretrain"):
            assert glob.glob(os.path.join(workdir, run, "tensorboard", "train", "events.out.*"))
    else:
        assert "the `tensorboard` package is not installed" in result.stderr

    # A stage run directly refuses a stale output (the config changed back).
    direct = _run("pipeline.train", workdir, idx_dir, *BASE)
    assert direct.returncode == 1
    assert "error: train: stage 'train'" in direct.stderr and "stale" in direct.stderr
    assert "--force" in direct.stderr and "Traceback" not in direct.stderr

    # --from_stage reaches run_pipeline from the command line (which stages it and
    # --force rerun is test_rerun_force_and_from_stage_run_what_they_name, in process).
    unknown = _run("pipeline.run", workdir, idx_dir, "--config.train.epochs=2", "--from_stage=x")
    assert unknown.returncode == 1
    assert "unknown --from_stage='x'; stages: preprocess, pretrain" in unknown.stderr
    result = _pipeline(workdir, idx_dir, "--config.train.epochs=2", "--from_stage=push")
    for name in stage.STAGES[:-1]:
        assert f"== {name}: complete, skipped" in result.stdout
    assert "== push: rerunning" in result.stdout
    assert _fingerprints(workdir) == second


def _wait_for(pattern, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = glob.glob(pattern)
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the pipeline ended (rc {proc.returncode}) before {pattern}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {pattern}")


def _kill_when(pattern, workdir, idx_dir, *overrides):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", *_args(workdir, idx_dir, *overrides)],
        cwd=harness.REPO,
        env=harness.env(keep_data_dir=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = _wait_for(pattern, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return found


def _weights(path):
    import keras

    return keras.saving.load_model(path).get_weights()


@pytest.mark.slow
def test_killed_pipeline_resumes_to_the_same_weights(tmp_path, completed, idx_dir):
    killed = str(tmp_path / "killed")
    # A kill during preprocess leaves no complete stage.
    _kill_when(os.path.join(killed, "preprocess.partial"), killed, idx_dir, *BASE)
    assert not any(stage.is_complete(killed, n) for n in stage.STAGES)

    # A kill after train checkpointed epoch >= 1 of some run.
    found = _kill_when(
        os.path.join(killed, "train.partial", "*", "checkpoints", "epoch-*.weights.h5"),
        killed,
        idx_dir,
        *BASE,
    )
    assert not stage.is_complete(killed, "train")
    assert os.path.isdir(os.path.join(killed, "train.partial"))
    # verbose is no part of a fingerprint; --quiet (given by _argv) overrides it.
    resumed = _pipeline(killed, idx_dir, *BASE, "--config.train.verbose=1")
    assert "Epoch " not in resumed.stdout
    assert "== train: running" in resumed.stdout
    # It continued from the checkpoint rather than starting over.
    assert "Resuming from" in resumed.stderr and "epochs already done" in resumed.stderr, found

    # The reference: the same config, never interrupted.
    reference, reference_stdout = completed
    assert "Epoch 4/4" in reference_stdout  # Keras's progress output, on without --quiet
    assert _fingerprints(killed) == _fingerprints(reference)
    for run in ("erm", "har"):
        a = os.path.join(killed, "train", run)
        b = os.path.join(reference, "train", run)
        assert not os.path.exists(os.path.join(a, "checkpoints"))
        hist_a = stage.read_json(os.path.join(a, "history.json"))
        hist_b = stage.read_json(os.path.join(b, "history.json"))
        assert len(hist_a["loss"]) == 4 and hist_a.keys() == hist_b.keys()
        # The per-epoch test metrics (config.eval.per_epoch_test, on by default) are
        # part of the history, so the exact comparison below covers them too.
        assert {epoch_eval.TEST_ACCURACY, epoch_eval.TEST_TOP5} <= hist_a.keys()
        assert sum(epoch_eval.is_class_key(k) for k in hist_a) == 10
        # Op determinism + the replayed tf.data epochs: the same computation, so the
        # same bits (no tolerance needed).
        for k in hist_a:
            np.testing.assert_array_equal(hist_a[k], hist_b[k], err_msg=f"{run} {k}")
        for wa, wb in zip(
            _weights(os.path.join(a, "model.keras")),
            _weights(os.path.join(b, "model.keras")),
            strict=True,
        ):
            np.testing.assert_array_equal(wa, wb, err_msg=run)


@pytest.mark.slow
def test_a_deleted_tau_json_is_reported_and_rerun_by_the_real_pipeline(
    tmp_path, completed, idx_dir
):
    workdir = _copy_of(completed, tmp_path)
    before = _fingerprints(workdir)
    os.remove(os.path.join(workdir, "estimate_tau", "tau.json"))
    message = (
        "stage estimate_tau is incomplete: tau.json is missing; "
        "rerun with --from_stage=estimate_tau"
    )
    # A stage run alone refuses its incomplete input, in one line.
    alone = _run("pipeline.train", workdir, idx_dir, *BASE, "--force")
    assert alone.returncode == 1 and "Traceback" not in alone.stderr
    assert message in alone.stderr
    # pipeline.run says so and reruns it and every later stage.
    result = _pipeline(workdir, idx_dir, *BASE)
    assert "stage estimate_tau is incomplete: tau.json is missing" in result.stderr
    assert "== pretrain: complete, skipped" in result.stdout
    for name in ("estimate_tau", "train", "evaluate", "export"):
        assert f"== {name}: rerunning" in result.stdout
    assert _fingerprints(workdir) == before
    assert stage.why_incomplete(workdir, "estimate_tau") is None
