"""Finished files reach their names durably (`stage.replace_durably`): the data is
flushed before the rename and the directory after it, so a host crash leaves the old
file or the whole new one, never an empty file under the final name.

A power loss cannot be simulated in a test; what can be checked is the order of the
system calls, seen through a recording `os.fsync` / `os.replace`, and that every
writer of a file a later stage or session relies on goes through the helper.
"""

import os

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from pipeline.core import stage
from pipeline.data import records as tfrecords
from pipeline.data_validation import validate
from pipeline.study import records as run_records


@pytest.fixture
def calls(monkeypatch):
    """The fsync and replace calls, in order, with the paths they act on."""
    seen = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        seen.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return seen


def test_the_data_is_flushed_before_the_rename_and_the_directory_after(tmp_path, calls):
    path = str(tmp_path / "out.json")
    stage.write_json(path, {"a": 1})
    assert calls == [
        ("fsync", path + ".tmp"),
        ("replace", path + ".tmp", path),
        ("fsync", str(tmp_path)),
    ]
    with open(path) as f:
        assert f.read() == '{\n  "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_file_that_cannot_be_flushed_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        stage.write_text(str(path), "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind


@pytest.fixture
def durable(monkeypatch):
    """The (tmp, path) pairs that went through `stage.replace_durably`."""
    seen = []
    original = stage.replace_durably

    def recording(tmp, path):
        seen.append((tmp, path))
        original(tmp, path)

    monkeypatch.setattr(stage, "replace_durably", recording)
    return seen


def test_run_records_shards_and_protos_go_through_it(tmp_path, durable):
    run_records.write(str(tmp_path), "main/seed0/erm", {"state": "done"})
    shard = str(tmp_path / "train-00000-of-00001.tfrecord")
    tfrecords.write_shard(shard, [b"x", b"y"])
    proto = str(tmp_path / "schema.pbtxt")
    validate.write_text_proto(proto, schema_pb2.Schema())
    written = [path for _, path in durable]
    assert written == [run_records.path(str(tmp_path), "main/seed0/erm"), shard, proto]
    assert all(os.path.exists(p) for p in written)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_checkpoints_and_the_model_go_through_it(tmp_path, durable):
    import keras

    from pipeline.training import modeling

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    checkpoint = modeling.EpochCheckpoint(str(tmp_path), [])
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    modeling.finish_fit(model, [{"loss": 1.0}], str(tmp_path), resume=False)
    written = [os.path.basename(path) for _, path in durable]
    assert written == [
        modeling.CHECKPOINT_HISTORY,
        "epoch-0001.weights.h5",
        "model.keras",
        "history.json",
    ]
    assert keras.models.load_model(str(tmp_path / "model.keras")).count_params() == 8
