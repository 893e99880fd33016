"""The push stage (pipeline/push.py): refuses unblessed models with the reasons, pushes
blessed ones atomically into a TF Serving base path that our server is watching."""

import os
import shutil
import time

import numpy as np
import pytest

from configs import fashion_mnist_hetero
from pipeline import export, push, serve
from pipeline.core import stage
from pipeline.evaluation import blessing
from pipeline.serving import infra_validation
from tests import harness
from tests.pipeline.test_serve import SHAPE, call, reference, tiny_model

# report.json `test` entries: HAR loses 10 points on noisy_rare against ERM.
TESTS = {
    "erm": {"overall": 0.8, "groups": {"noisy_rare": 0.5}, "per_class": [], "top5": None},
    "har": {"overall": 0.8, "groups": {"noisy_rare": 0.4}, "per_class": [], "top5": None},
}


def _config(destination="serving/har"):
    config = fashion_mnist_hetero.get_config("smoke")
    config.export.push_destination = destination
    return config


def _workdir(root, *, har_noisy_rare=0.4, infra=infra_validation.INFRA_BLESSED, config=None) -> str:
    """evaluate (blessings judged by the default thresholds) and export (a tiny
    SavedModel as har version 1, and its infra blessing) stages, written by hand
    (with `config`'s fingerprints, so that a stage program accepts them as inputs)."""
    workdir = str(root / "work")
    tests = {**TESTS, "har": {**TESTS["har"], "groups": {"noisy_rare": har_noisy_rare}}}
    specs = blessing.thresholds(_config())
    with stage.stage_output(workdir, "evaluate", config) as out:
        report = {"runs": {n: {"test": t} for n, t in tests.items()}}
        stage.write_json(os.path.join(out, "report.json"), report)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write("report\n")
        for run in tests:
            os.makedirs(os.path.join(out, run))
            stage.write_json(blessing.path(out, run), blessing.judge(run, tests, specs))
    with stage.stage_output(workdir, "export", config) as out:
        export.export_saved_model(tiny_model(seed=1), os.path.join(out, "har", "1"), SHAPE)
        stage.write_json(os.path.join(out, infra_validation.FILE), {"status": infra})
    return workdir


def _record(workdir):
    return stage.read_json(os.path.join(workdir, "push", push.FILE))


def test_an_unblessed_model_is_refused_with_the_reasons(tmp_path, capsys):
    workdir = _workdir(tmp_path, infra="INFRA_NOT_BLESSED")
    push.run(_config(), workdir)
    record = _record(workdir)
    assert record["pushed"] is False and record["forced"] is False
    assert record["reasons"] == [
        "run 'har' is NOT_BLESSED",
        "failed noisy_rare_vs_erm: accuracy on noisy_rare = 0.4000 vs erm's 0.5000 "
        "(change -0.1000, relative -0.2000), must be change >= -0.005",
        "the export is INFRA_NOT_BLESSED",
    ]
    assert not os.path.exists(os.path.join(workdir, "serving"))
    printed = capsys.readouterr().out
    assert "REFUSED" in printed and "failed noisy_rare_vs_erm" in printed


def test_force_push_pushes_and_records_what_it_overrode(tmp_path):
    workdir = _workdir(tmp_path)
    push.run(_config(), workdir, force_push=True)
    record = _record(workdir)
    assert record["pushed"] is True and record["forced"] is True
    assert record["reasons"][0] == "run 'har' is NOT_BLESSED"
    assert os.path.isfile(os.path.join(workdir, "serving", "har", "1", "saved_model.pb"))


@pytest.mark.slow
def test_force_push_flag_of_the_push_program(tmp_path):
    """`python -m pipeline.push` refuses the unblessed model (exit 0, a record of
    the refusal), then with --force_push pushes it: the flag reaches `run`."""
    config = _config()
    workdir = _workdir(tmp_path, config=config)
    argv = (
        f"--config={harness.config()}",
        f"--workdir={workdir}",
        "--config.export.push_destination=serving/har",
    )
    refused = harness.run_module("pipeline.push", *argv)
    assert refused.returncode == 0, refused.stderr[-2000:]
    assert _record(workdir)["pushed"] is False and "REFUSED" in refused.stdout
    forced = harness.run_module("pipeline.push", *argv, "--force_push")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert _record(workdir)["pushed"] is True and _record(workdir)["forced"] is True
    assert os.path.isfile(os.path.join(workdir, "serving", "har", "1", "saved_model.pb"))


def test_an_empty_destination_pushes_nothing(tmp_path, capsys):
    workdir = _workdir(tmp_path, har_noisy_rare=0.5)
    push.run(_config(""), workdir)
    assert _record(workdir)["pushed"] is False
    assert "push_destination is empty" in capsys.readouterr().out


def test_a_blessed_model_is_pushed_atomically_while_the_server_watches(tmp_path, monkeypatch):
    """Mid-copy (the copy complete, the rename not yet done) the watching server finds
    no version; after the push it loads version 1 and answers as the export does."""
    workdir = _workdir(tmp_path, har_noisy_rare=0.5)  # a change of 0: blessed
    dest = os.path.join(workdir, "serving", "har")
    server = serve.Server(dest, model_name="har", host="127.0.0.1", port=0, poll_seconds=0.1)
    server.start()
    seen_mid_copy = []
    real_copytree = shutil.copytree

    def copytree(src, dst, *args, **kwargs):  # shutil's own recursion calls it too
        out = real_copytree(src, dst, *args, **kwargs)
        if os.path.dirname(dst) == dest:  # the whole version directory is copied
            server.store.refresh()  # what the poller would see now
            seen_mid_copy.append((server.store.versions(), serve.find_versions(dest)))
        return out

    monkeypatch.setattr(push.shutil, "copytree", copytree)
    try:
        push.run(_config(), workdir)
        assert seen_mid_copy == [([], {})]
        record = _record(workdir)
        assert record["pushed"] is True and record["reasons"] == []
        assert record["blessing"] == "BLESSED" and record["forced"] is False
        assert sorted(os.listdir(dest)) == ["1"]  # no temporary directory left
        deadline = time.time() + 60
        while server.store.versions() != [1] and time.time() < deadline:
            time.sleep(0.1)
        images = np.random.default_rng(0).integers(0, 256, size=(3, *SHAPE), dtype=np.uint8)
        status, body = call(server, "POST", "/v1/models/har:predict", {"inputs": images.tolist()})
        assert status == 200, body
        expected = reference(os.path.join(workdir, "export", "har", "1"), images)
        np.testing.assert_allclose(
            body["outputs"]["probabilities"], expected["probabilities"], rtol=1e-6
        )
    finally:
        server.shutdown()


def test_an_existing_version_is_never_overwritten(tmp_path):
    workdir = _workdir(tmp_path, har_noisy_rare=0.5)
    src = os.path.join(workdir, "export", "har", "1")
    other = os.path.join(workdir, "serving", "har", "1")
    os.makedirs(other)
    with open(os.path.join(other, "saved_model.pb"), "wb") as f:
        f.write(b"another model")
    with pytest.raises(stage.PipelineError, match="already exists with other content"):
        push.run(_config(), workdir)
    with open(os.path.join(other, "saved_model.pb"), "rb") as f:
        assert f.read() == b"another model"
    assert not stage.is_complete(workdir, "push")
    # An identical copy counts as pushed already.
    shutil.rmtree(other)
    shutil.copytree(src, other)
    push.run(_config(), workdir)
    record = _record(workdir)
    assert record["pushed"] is True and record["already_there"] is True


def _edit_blessing(workdir, edit):
    """Rewrites the har run's blessing.json as edit(text), keeping its size as the sed
    of issue 29 did (so metadata.json's recorded size still matches)."""
    path = blessing.path(os.path.join(workdir, "evaluate"), "har")
    with open(path) as f:
        text = f.read()
    new = edit(text)
    assert new != text
    with open(path, "w") as f:
        f.write(new.ljust(len(text)) if len(new) < len(text) else new)


@pytest.mark.parametrize(
    "edit, says",
    [
        # Issue 29's probe: only the status turned, same size.
        (
            lambda t: t.replace('"status": "NOT_BLESSED"', '"status":     "BLESSED"'),
            "it says 'BLESSED' where the thresholds and report.json's metrics give 'NOT_BLESSED'",
        ),
        # Status and the failed threshold's outcome both turned.
        (
            lambda t: t.replace('"status": "NOT_BLESSED"', '"status":     "BLESSED"').replace(
                '"passed": false', '"passed": true '
            ),
            "it says 'BLESSED'",
        ),
        (lambda t: "[]", "it holds a JSON list, not an object"),
        (lambda t: t.replace('"status"', '"statuz"'), "it says None"),
    ],
    ids=["status", "status-and-passed", "a-list", "no-status"],
)
def test_a_hand_edited_blessing_is_not_trusted(tmp_path, capsys, edit, says):
    """Issue 29 item 1 (and item 7's malformed blessings): push recomputes the
    blessing from report.json and the thresholds; an edited file is refused, and
    the status recorded is the recomputed NOT_BLESSED."""
    workdir = _workdir(tmp_path)  # har loses 10 points on noisy_rare: NOT_BLESSED
    _edit_blessing(workdir, edit)
    assert stage.why_incomplete(workdir, "evaluate") is None  # the size check passes
    push.run(_config(), workdir)
    record = _record(workdir)
    assert record["pushed"] is False and record["blessing"] == "NOT_BLESSED"
    assert "is not what the evaluate stage wrote: " + says in record["reasons"][0]
    assert "failed noisy_rare_vs_erm" in " ".join(record["reasons"])
    assert not os.path.exists(os.path.join(workdir, "serving"))
    assert "REFUSED" in capsys.readouterr().out


def test_a_blessing_edited_in_one_threshold_names_it(tmp_path):
    """A blessed model whose recorded value was edited (status unchanged) is refused
    too, naming the threshold; the untouched file pushes."""
    workdir = _workdir(tmp_path, har_noisy_rare=0.5)  # blessed
    _edit_blessing(workdir, lambda t: t.replace('"value": 0.5', '"value": 0.9'))
    push.run(_config(), workdir)
    record = _record(workdir)
    assert record["pushed"] is False and record["blessing"] == "BLESSED"
    assert record["reasons"] == [
        f"{blessing.path(os.path.join(workdir, 'evaluate'), 'har')} is not what the evaluate "
        "stage wrote: its thresholds noisy_rare_vs_erm differ from what the thresholds and "
        "report.json's metrics give; rerun with --from_stage=evaluate"
    ]


@pytest.mark.parametrize(
    "where, says",
    [("file", "File exists"), ("under-file", "Not a directory"), ("read-only", "Read-only")],
)
def test_an_unwritable_destination_is_one_line(tmp_path, monkeypatch, where, says):
    """Issue 29 item 7: a destination that is a file, or under one, or new on a
    read-only file system (simulated: os.makedirs raises EROFS there, as root may
    write anywhere) is a PipelineError naming it, not a traceback; nothing completes."""
    import errno

    workdir = _workdir(tmp_path, har_noisy_rare=0.5)
    blocker = os.path.join(workdir, "blocker")
    with open(blocker, "w") as f:
        f.write("a file")
    dest = {"file": blocker, "under-file": os.path.join(blocker, "har")}.get(where)
    if where == "read-only":
        dest = os.path.join(workdir, "ro", "har")
        real_makedirs = os.makedirs

        def makedirs(path, *args, **kwargs):
            if os.path.abspath(path).startswith(os.path.join(workdir, "ro")):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
            return real_makedirs(path, *args, **kwargs)

        monkeypatch.setattr(os, "makedirs", makedirs)
    with pytest.raises(stage.PipelineError, match=f"^cannot push to {dest}/1: .*{says}"):
        push.run(_config(dest), workdir)
    assert not stage.is_complete(workdir, "push")


def test_a_killed_pushs_leftover_is_removed_and_a_live_ones_kept(tmp_path):
    """Issue 29 item 7: a push killed before its rename leaves .push-1-<pid>.tmp; the
    next push deletes it (its process is gone) but not a live process's copy."""
    import subprocess
    import sys

    workdir = _workdir(tmp_path, har_noisy_rare=0.5)
    dest = os.path.join(workdir, "serving", "har")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    for pid in (dead_pid, os.getppid()):
        shutil.copytree(
            os.path.join(workdir, "export", "har", "1"), os.path.join(dest, f".push-1-{pid}.tmp")
        )
    push.run(_config(), workdir)
    assert sorted(os.listdir(dest)) == sorted(["1", f".push-1-{os.getppid()}.tmp"])


@pytest.mark.parametrize("same", [True, False], ids=["same-model", "other-model"])
def test_a_push_that_loses_the_race_says_already_there(tmp_path, monkeypatch, same):
    """Issue 29 item 7: two workdirs push version 1 at once; the loser's rename fails
    because the winner's version appeared after the loser's check. The same model
    is "already there"; another model is refused as with any existing version."""
    workdir = _workdir(tmp_path, har_noisy_rare=0.5)
    src = os.path.join(workdir, "export", "har", "1")
    dest = os.path.join(workdir, "serving", "har")
    real_rename = os.rename

    def rename(a, b):
        if b == os.path.join(dest, "1"):  # the winner renames its copy first
            shutil.copytree(src, os.path.join(dest, ".winner"))
            if not same:
                with open(os.path.join(dest, ".winner", "saved_model.pb"), "ab") as f:
                    f.write(b"other")
            real_rename(os.path.join(dest, ".winner"), b)
        return real_rename(a, b)

    monkeypatch.setattr(push.os, "rename", rename)
    if not same:
        with pytest.raises(stage.PipelineError, match="already exists with other content"):
            push.run(_config(), workdir)
        return
    push.run(_config(), workdir)
    record = _record(workdir)
    assert record["pushed"] is True and record["already_there"] is True
    assert sorted(os.listdir(dest)) == ["1"]
