"""Data validation of the preprocess stage: the statistics, schema and anomalies files.

The I/O around three pure modules, each one TFX component's part:
data_statistics.py (StatisticsGen), data_schema.py (SchemaGen; ImportSchemaGen is
`config.data.schema`) and data_anomalies.py (ExampleValidator). After the Beam job,
`validate_output` writes into the stage directory

  statistics.pbtxt         a DatasetFeatureStatisticsList, one dataset per split, in
                           text format (`tfdv.load_statistics` reads it)
  schema.pbtxt             a copy of the Schema the splits were checked against
  anomalies-<split>.pbtxt  an Anomalies proto per split (`tfdv.load_anomalies_text`)

and returns manifest.json's `data_validation` entry. The schema comes from

  config.data.schema = PATH  a user's (curated) schema in text format: read, never
                             written (ImportSchemaGen);
  config.data.schema = ""    <workdir>/schema/schema.pbtxt, inferred by the first run
                             of the workdir that passes validation and kept outside
                             the stage directory, so that reruns of preprocess (a
                             changed config, --force) are checked against it. Delete
                             it to infer a new one.

Hard anomalies raise PipelineError naming each split, feature and value (the
anomalies files stay in `<workdir>/preprocess.partial` for a look); soft ones are
logged as warnings and recorded. docs/DATA_VALIDATION.md has the whole story.
"""

from __future__ import annotations

import os
import uuid

from absl import logging
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data import records
from pipeline.data_validation import anomalies as data_anomalies
from pipeline.data_validation import schema as data_schema
from pipeline.data_validation import statistics as data_statistics

SCHEMA_DIR = "schema"  # under the workdir, beside the stage directories
STATISTICS_FILE = "statistics.pbtxt"
SCHEMA_FILE = "schema.pbtxt"
ANOMALIES_FILE = "anomalies-{split}.pbtxt"
# Where the schema in force came from (manifest.json's data_validation.schema_origin).
GIVEN, EARLIER_RUN, INFERRED = "config.data.schema", "earlier run", "inferred"


def workdir_schema(workdir: str) -> str:
    """The path of the schema inferred for (and kept in) a workdir."""
    return os.path.join(workdir, SCHEMA_DIR, SCHEMA_FILE)


def write_text_proto(path: str, message) -> None:
    """Writes a proto in text format through a temporary file renamed into place."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text_format.MessageToString(message))
        stage.replace_durably(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_schema(path: str, origin: str) -> schema_pb2.Schema:
    """The Schema in text format at `path`; PipelineError naming it if unreadable."""
    where = f"config.data.schema = {path!r}" if origin == GIVEN else f"the schema {path}"
    try:
        with open(path, encoding="utf-8") as f:
            return text_format.Parse(f.read(), schema_pb2.Schema())
    except FileNotFoundError:
        raise PipelineError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        fix = "" if origin == GIVEN else "; delete it to infer a new one"
        raise PipelineError(f"{where} is not a text-format Schema proto ({e}){fix}") from e


def split_statistics(plan, split_stats: dict) -> statistics_pb2.DatasetFeatureStatisticsList:
    """The statistics of every split, from the per-split JSON the Beam job wrote."""
    out = statistics_pb2.DatasetFeatureStatisticsList()
    for split in records.SPLITS:
        stats = split_stats[split]
        out.datasets.append(
            data_statistics.split_statistics(
                split,
                data_statistics.Summary.from_json(stats["summary"]),
                stats["transition_counts_before_cut"],
                stats["transition_counts"],
                plan.modality,
            )
        )
    return out


def load_schema(config, workdir: str) -> tuple[schema_pb2.Schema | None, str, str]:
    """(schema, origin, path) of the schema in force; schema None: to be inferred.

    Called before the Beam job, so that an unreadable schema fails before any work.
    """
    given = config.data.get("schema", "")
    if given:
        return read_schema(given, GIVEN), GIVEN, given
    path = workdir_schema(workdir)
    if os.path.exists(path):
        return read_schema(path, EARLIER_RUN), EARLIER_RUN, path
    return None, INFERRED, path


def _hard_error(hard, origin: str, path: str, out_dir: str) -> PipelineError:
    source = {
        GIVEN: f"the schema config.data.schema = {path!r}",
        EARLIER_RUN: f"the schema {path} (inferred by an earlier run of this workdir)",
        INFERRED: "the schema inferred from this run's data",
    }[origin]
    fix = {
        GIVEN: "fix the data or that schema",
        EARLIER_RUN: f"if the data changed on purpose, delete {path} to infer a new "
        "schema, or set config.data.schema to a curated one",
        INFERRED: "fix the data or the config, or set config.data.schema to a curated "
        "schema (e.g. one whose label domains are not is_categorical)",
    }[origin]
    splits = sorted({f.split for f in hard})
    files = ", ".join(os.path.join(out_dir, ANOMALIES_FILE.format(split=s)) for s in splits)
    problems = "; ".join(str(f) for f in hard)
    return PipelineError(
        f"data validation against {source} failed: {problems}. Anomalies: {files}; {fix}"
    )


def validate_output(plan, loaded, out_dir: str, split_stats: dict) -> dict:
    """Writes statistics, schema and anomalies into `out_dir`; checks the splits.

    Args:
      plan: the preprocess plan (modality, num_classes).
      loaded: what `load_schema` returned (before the Beam job).
      out_dir: the stage's `.partial` directory.
      split_stats: per split, the JSON the Beam job wrote (transition counts, summary).

    Returns:
      manifest.json's `data_validation` entry: the files, the schema's origin, the
      soft anomalies and a per-split summary of the statistics.

    Raises:
      PipelineError: on a hard anomaly (naming split, feature and value).
    """
    statistics = split_statistics(plan, split_stats)
    write_text_proto(os.path.join(out_dir, STATISTICS_FILE), statistics)
    schema, origin, path = loaded
    if schema is None:
        schema = data_schema.infer_schema(statistics, num_classes=plan.num_classes)
    write_text_proto(os.path.join(out_dir, SCHEMA_FILE), schema)
    findings = data_anomalies.validate(statistics, schema)
    protos = data_anomalies.anomalies_protos(statistics, schema, findings)
    for split, anomalies in protos.items():
        write_text_proto(os.path.join(out_dir, ANOMALIES_FILE.format(split=split)), anomalies)
    hard = [f for f in findings if f.hard]
    if hard:
        raise _hard_error(hard, origin, path, out_dir)
    for finding in findings:
        logging.warning("data validation (soft anomaly): %s", finding)
    if origin == INFERRED:
        write_text_proto(path, schema)
        logging.info(
            "data validation: inferred the schema %s; later runs are checked against it", path
        )
    return {
        "statistics": STATISTICS_FILE,
        "schema": SCHEMA_FILE,
        "schema_origin": origin,
        # The workdir's schema relative to the workdir: the manifest does not depend on
        # where the workdir is.
        "schema_source": path if origin == GIVEN else os.path.join(SCHEMA_DIR, SCHEMA_FILE),
        "anomaly_files": {s: ANOMALIES_FILE.format(split=s) for s in protos},
        "soft_anomalies": {s: [str(f) for f in findings if f.split == s] for s in protos},
        "splits": data_statistics.manifest_summary(statistics),
    }
