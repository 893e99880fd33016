"""Run records (pipeline.study.records) that are records in name only stop the study
and its report with the file's name, not a KeyError (issue 29 item 4)."""

import json
import os

import pytest

from configs.studies import smoke
from pipeline.core import stage
from pipeline.study import records, report, runner, study_md
from pipeline.study.config import Job
from pipeline.study.runner import Study
from tests.pipeline.test_study import _fake_done


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda r: r.pop("history"), "history missing or malformed"),
        (lambda r: r["history"].pop("loss"), "history missing or malformed"),
        (lambda r: r.pop("test_counts"), "test_counts missing or malformed"),
        (lambda r: r.update(started=None, finished="1"), "started, finished missing"),
    ],
    ids=["no-history", "history-without-loss", "no-test-counts", "no-times"],
)
def test_a_done_record_without_what_the_report_reads_names_the_file(tmp_path, edit, says):
    study = Study(smoke.get_config(), str(tmp_path))
    job = Job("main", 0, "har", 1.0)
    _fake_done(study, job, val=0.8, test_primary=0.3)
    assert study.status(job) == "done"  # writes the record
    path = records.path(str(tmp_path), study.run_key(job))
    with open(path) as f:
        record = json.load(f)
    edit(record)
    with open(path, "w") as f:
        json.dump(record, f)
    message = f"run record {path} is not a done run record: {says}"
    with pytest.raises(stage.PipelineError, match="^" + message.replace(".", r"\.")):
        study.status(job)
    with pytest.raises(stage.PipelineError, match="delete it to rerun that run$"):
        report.build(study)  # what --aggregate_only runs


def test_a_failed_record_needs_its_error(tmp_path):
    study = Study(smoke.get_config(), str(tmp_path))
    job = Job("main", 0, "har", 1.0)
    key, fp = study.run_key(job), study.fingerprints(job)["train"]
    records.write(str(tmp_path), key, {"fingerprint": fp, "state": "failed"})
    with pytest.raises(stage.PipelineError, match="not a failed run record: error missing"):
        study.status(job)
    records.write(str(tmp_path), key, records.failed_record(fp, "boom"))
    assert study.status(job) == "failed"


def test_a_record_of_another_fingerprint_is_named_as_ignored(tmp_path, capsys, monkeypatch):
    """A record left by another config or code version is ignored (the run trains
    again), and the runner says so before it starts, naming one."""

    study = Study(smoke.get_config(), str(tmp_path))
    job = Job("main", 0, "har", 1.0)
    _fake_done(study, job, val=0.8, test_primary=0.3)
    assert study.status(job) == "done"  # writes the record
    assert runner.stale_records(study, study.plan()) == []
    path = records.path(str(tmp_path), study.run_key(job))
    with open(path) as f:
        record = json.load(f)
    record["fingerprint"] = "0" * 64  # as another har_tf version would have made it
    records.write(str(tmp_path), study.run_key(job), record)
    os.remove(os.path.join(study.paths(job)[1], "train", stage.METADATA))  # no stage
    assert study.status(job) == "todo"
    assert runner.stale_records(study, study.plan()) == ["main/seed0/har_lam1"]

    class Trains(Exception):
        pass

    def trains(*args):
        raise Trains

    monkeypatch.setattr(runner, "_run_next", trains)
    with pytest.raises(Trains):  # said before the first run
        runner.run_study(smoke.get_config(), str(tmp_path))
    out = capsys.readouterr().out
    assert out.startswith("== note: 1 run record(s) of another fingerprint ")
    assert "are ignored and those runs train again, e.g. main/seed0/har_lam1\n" in out


def test_a_record_keeps_the_commit_that_trained_it_and_study_md_counts_them(tmp_path):
    """The train stage's `code` (pipeline.core.provenance) goes into the run's record;
    study.md names each commit with its number of runs, a run outside git as unknown
    and records of code before that as not recorded."""
    study = Study(smoke.get_config(), str(tmp_path))
    jobs = [j for j in study.plan() if j.lam is not None][:5]
    a, b = "a" * 40, "b" * 40
    codes = [
        {"commit": a, "dirty": False},
        {"commit": b, "dirty": True},
        {"commit": None, "dirty": None},  # not run from a git checkout
        None,  # a train stage written before stages recorded their code
        {"commit": a, "dirty": False},
    ]
    for job, code in zip(jobs, codes, strict=True):
        _fake_done(study, job, val=0.8, test_primary=0.3)
        meta_path = os.path.join(study.paths(job)[1], "train", stage.METADATA)
        meta = stage.read_json(meta_path)
        if code is not None:
            meta["code"] = code
        stage.write_json(meta_path, meta)
    assert [study.record(j).get("code") for j in jobs] == codes
    result = report.build(study)
    assert result["trained_by"][0] == {"code": codes[0], "runs": 2}  # most runs first
    assert sorted(result["trained_by"][1:], key=str) == sorted(
        [{"code": c, "runs": 1} for c in codes[1:4]], key=str
    )
    text = study_md.markdown(result, {}, {})
    for part in (
        f"`{a}`: 2 runs",
        f"`{b}` with uncommitted changes: 1 run",
        "unknown (not run from a git checkout): 1 run",
        "not recorded (records written before records kept it): 1 run",
    ):
        assert part in text
    assert text.count("Runs trained by the code of ") == 1


def test_a_resumed_run_names_its_earlier_attempts_and_leaves_the_runtimes(tmp_path):
    """A train stage finished by a resumed attempt (stage metadata's earlier_attempts)
    carries them into its record: study.md names the code that began it, and its
    wall clock, the last attempt's only, is not counted as a run's runtime."""
    study = Study(smoke.get_config(), str(tmp_path))
    jobs = [j for j in study.plan() if j.lam is not None][:3]
    a, c = {"commit": "a" * 40, "dirty": False}, {"commit": "c" * 40, "dirty": False}
    earlier = [
        [],
        [{"started": 1.0, "code": c}, {"started": 2.0, "code": a}],
        [{"started": 1.0, "code": a}],  # resumed by the same code
    ]
    for job, attempts in zip(jobs, earlier, strict=True):
        _fake_done(study, job, val=0.8, test_primary=0.3)
        meta_path = os.path.join(study.paths(job)[1], "train", stage.METADATA)
        meta = stage.read_json(meta_path)
        meta.update(code=a, earlier_attempts=attempts, started=10.0, finished=15.0)
        stage.write_json(meta_path, meta)
    assert [study.record(j).get("earlier_attempts") for j in jobs] == [None, *earlier[1:]]
    result = report.build(study)
    assert sorted(result["trained_by"], key=str) == sorted(
        [{"code": a, "runs": 2}, {"code": a, "runs": 1, "resumed_from": [c]}], key=str
    )
    text = study_md.markdown(result, {}, {})
    assert f"`{'a' * 40}` (resuming runs begun by `{'c' * 40}`): 1 run" in text
    runtimes = report.runtime_table(study)
    assert [list(runs.values()) for runs in runtimes.values()] == [[5.0]]
    assert list(next(iter(runtimes.values()))) == [f"seed{jobs[0].seed}/{study.run_name(jobs[0])}"]


def test_keys_lists_every_record_by_the_key_path_gives_it(tmp_path):
    written = ["noaug/seed1/har_lam0p5", "main/seed0/erm", "main/seed10/unif_lam4"]
    for key in written:
        records.write(str(tmp_path), key, records.failed_record("f", "boom"))
    (tmp_path / "study" / records.RECORDS / "main" / "notes.txt").write_text("not a record")
    assert records.keys(str(tmp_path / "study" / records.RECORDS)) == sorted(written)
    assert records.path(str(tmp_path), written[0]) == records.file_in(
        str(tmp_path / "study" / records.RECORDS), written[0]
    )
