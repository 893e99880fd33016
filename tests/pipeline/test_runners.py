"""The `preprocess` job gives the same records on every runner we support.

One config on a small generated IDX dataset runs on the in-process FnApiRunner (the
default), on the FnApiRunner with two worker processes (Beam's DirectRunner options
`--direct_running_mode=multi_processing --direct_num_workers=2`), and on the
DaskRunner against a dask.distributed scheduler and two workers, each its own
process on 127.0.0.1. The three outputs must hold the same records, byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline import preprocess
from pipeline.core import stage
from pipeline.data import records
from tests import harness
from tests.pipeline import idx_fixtures
from tests.pipeline.test_preprocess import smoke_config

NUM_WORKERS = 2


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stops the processes started here (a worker's nanny stops its own worker)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """(address, log file) of a dask scheduler with 2 one-thread workers, all separate
    processes.

    The workers import `pipeline` and `har_tf` from this checkout (cwd and
    PYTHONPATH); everything started here is stopped at the end, whatever happened.
    """
    distributed = pytest.importorskip(
        "distributed", reason="dask/distributed are not installed (see requirements.txt)"
    )
    pytest.importorskip("dask", reason="dask is not installed (see requirements.txt)")
    directory = tmp_path_factory.mktemp("dask")
    scheduler_file = str(directory / "scheduler.json")
    env = {**os.environ, "PYTHONPATH": harness.REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs: list[subprocess.Popen] = []

    def start(module: str, *args: str, log: str) -> None:
        with open(directory / log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", f"distributed.cli.{module}", *args],
                    cwd=harness.REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    try:
        start(
            "dask_scheduler",
            "--host=127.0.0.1",
            "--port=0",
            "--no-dashboard",
            f"--scheduler-file={scheduler_file}",
            log="scheduler.log",
        )
        for i in range(NUM_WORKERS):
            start(
                "dask_worker",
                f"--scheduler-file={scheduler_file}",
                "--host=127.0.0.1",
                "--nworkers=1",
                "--nthreads=1",
                "--no-dashboard",
                log=f"worker{i}.log",
            )
        with distributed.Client(scheduler_file=scheduler_file, timeout=60) as client:
            client.wait_for_workers(NUM_WORKERS, timeout=120)
            address = client.scheduler.address
        yield address, directory / "scheduler.log"
    finally:
        _stop(procs)


def _records(path: str) -> set[tuple[int, int, int, bytes]]:
    """(id, label, clean_label, image bytes) of every record of a shard file."""
    out = set()
    for serialized in tf.data.TFRecordDataset(path):
        ex = tf.io.parse_single_example(serialized, records.FEATURES)
        out.add(
            (
                int(ex["id"]),
                int(ex["label"]),
                int(ex["clean_label"]),
                ex["image"].numpy(),
            )
        )
    return out


@pytest.mark.slow
def test_all_runners_write_the_same_records(dask_cluster, tmp_path):
    address, scheduler_log = dask_cluster
    data_dir = tmp_path / "idx"
    idx_fixtures.write_dataset(data_dir, num_train=1_200, num_test=300, gzip_splits=("train",))
    # Four chunks of train: the runners really spread and merge them.
    config = smoke_config(data_dir, chunk_size=300, num_shards=3)
    runners = {
        "in_process": [],
        "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        "dask": ["--runner=DaskRunner", f"--dask_client_address={address}"],
    }
    outputs = {}
    for name, beam_args in runners.items():
        workdir = str(tmp_path / name)
        preprocess.run(config, workdir, beam_args)
        outputs[name] = stage.stage_dir(workdir, preprocess.STAGE)

    reference = outputs.pop("in_process")
    want_manifest = stage.read_json(os.path.join(reference, preprocess.MANIFEST))
    assert want_manifest["splits"]["train"]["num_examples"] < 1_200  # The cut happened.
    for split in records.SPLITS:
        paths = records.shard_paths(reference, split)
        want = set().union(*(_records(p) for p in paths))
        assert len(want) == want_manifest["splits"][split]["num_examples"]
        for name, out in outputs.items():
            got_paths = records.shard_paths(out, split)
            assert [os.path.basename(p) for p in got_paths] == [
                os.path.basename(p) for p in paths
            ], name
            assert set().union(*(_records(p) for p in got_paths)) == want, (name, split)
            for a, b in zip(paths, got_paths, strict=True):
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    assert fa.read() == fb.read(), f"{name}: {os.path.basename(b)} differs"
    for name, out in outputs.items():
        manifest = stage.read_json(os.path.join(out, preprocess.MANIFEST))
        assert manifest == want_manifest, name
    # Each side input reached its tasks as a dependency: no task computed one itself
    # through a client of its own (a worker's client connects to the scheduler as
    # "Client-worker-..."), the nested computation that once came back empty.
    assert "Client-worker" not in scheduler_log.read_text()
