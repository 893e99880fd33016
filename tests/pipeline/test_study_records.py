"""Run records (pipeline.study.records) that are records in name only stop the study
and its report with the file's name, not a KeyError (issue 29 item 4)."""

import json

import pytest

from configs.studies import smoke
from pipeline.core import stage
from pipeline.study import records, report
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
