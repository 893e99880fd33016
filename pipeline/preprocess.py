r"""Stage `preprocess`: source images -> corrupted, cut, sharded TFRecords (Apache Beam).

  python -m pipeline.preprocess --config=configs/fashion_mnist_hetero.py \
      --workdir=runs/fm [--beam_args="--direct_num_workers=2 \
      --direct_running_mode=multi_processing"]

Train split: each example's noisy label is drawn from the row of its clean label in
the noise transition matrix (`config.data.noise`: pairs, groups, the paper's
presets, uniform, asymmetric or a given matrix), then an imbalance
(`config.data.imbalance`: step, long_tailed or counts) keeps, in each cut class,
the `target` examples with the smallest `(imbalance_sort_keys(id), id)`. Test
split: written as is (label == clean_label). Every random choice is a hash of
(config.seed, id) (see `har_tf.corruption`), so the output is the same set of
records whatever the runner, worker count or chunking, and equals the in-memory
reference `corrupt_labels` + `imbalance_keep_mask`. The files are deterministic too: shard `s`
of a split holds the records with `id % num_shards == s`, sorted by id, so two runs
of the same config write byte-identical shards (see `_WriteShard`).

The Beam graph, per split; examples are read in chunks of `config.data.chunk_size`
and processed as numpy arrays:

  chunk ranges -> labels pass (labels file only): noisy labels, sort keys
      -> counts before the cut (C x C transition counts, summed)  -> targets
      -> per cut class c, the `bound[c]` smallest (key, id) (a vectorized top-k
         combiner; `bound[c]` >= any target c can get, `Plan.candidate_bounds`,
         pipeline/data/plan.py)
      -> the target-th smallest = the class's keep threshold     -> side input
  chunk ranges -> write pass (images + labels, threshold side input): noisy labels,
      keep mask, encoded records batched by shard (id % num_shards)
      -> GroupByKey(shard) -> sort by id, write the shard file; kept C x C counts (summed);
         a summary of the kept records (merged, pipeline/data_validation/statistics.py)
  counts, targets, summary -> a small JSON per split, folded into manifest.json
  afterwards, and into the statistics that pipeline/data_validation/validate.py checks
  against the schema (docs/DATA_VALIDATION.md): a hard anomaly fails the stage.

The combiners live in pipeline/data_validation/combiners.py.

Runner: `--runner=FnApiRunner` by default, Beam's in-process batch runner. Beam's
plain "DirectRunner" first tries the Prism runner, which downloads a binary (no
network here, and a surprise anywhere; offline it falls back to the FnApiRunner).
Anything in `--beam_args` overrides it: `--direct_num_workers=2
--direct_running_mode=multi_processing` runs the FnApiRunner with 2 worker
processes; `--runner=DaskRunner --dask_client_address=tcp://HOST:PORT` runs on a
dask.distributed cluster (`pipeline.data.dask_runner`). docs/DATA.md, "Runners", has
these and the Dataflow, Flink and Spark options.
"""

from __future__ import annotations

import importlib
import json
import logging as py_logging
import os
import re

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.combiners import TupleCombineFn

from har_tf import corruption
from pipeline import cli
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data import datasets, records, text, validation
from pipeline.data import manifest as preprocess_manifest
from pipeline.data import plan as preprocess_plan

# make_plan and the config vocabularies are re-exported: `preprocess.make_plan` etc.
from pipeline.data.plan import (  # noqa: F401
    IMBALANCE_KINDS,
    NOISE_KINDS,
    Plan,
    make_plan,
    noise_matrix,
)
from pipeline.data_validation import statistics, validate
from pipeline.data_validation.combiners import (
    MergeSummaries,
    SmallestByKey,
    SumCounts,
    SumTokenCounts,
)

STAGE = "preprocess"
MANIFEST = "manifest.json"
DEFAULT_BEAM_ARGS = ("--runner=FnApiRunner",)
_DASK_RUNNER = "pipeline.data.dask_runner.DaskRunner"
_DASK_RUNNER_NAMES = ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")


class _EncodeChunk(beam.DoFn):
    """Reads a chunk, corrupts and cuts it; emits encoded records and what was kept.

    Main output: one `(shard, (ids, records))` per shard of the split, `ids` the
    kept example ids with `id % num_shards == shard` (ascending) and `records` their
    serialized Examples. Every shard gets an element, empty or not, so each shard
    reaches `_WriteShard` and is written even if it holds no record. Output KEPT:
    the kept records' C x C transition counts and their `data_statistics.Summary`
    (for the split's statistics), one pair per chunk. For text, the train split also
    emits the token counts of its kept records (output TOKENS), from which the
    vocabulary is built.
    """

    KEPT = "kept"
    TOKENS = "tokens"

    def __init__(self, plan: Plan, split: str):
        self._plan = plan
        self._split = split

    def process(self, chunk, thresholds=None):
        plan = self._plan
        start, stop = chunk
        inputs, clean = plan.source.read(self._split, start, stop)
        labels = preprocess_plan.corrupt(plan, self._split, start, clean)
        keep = preprocess_plan.keep_mask(labels, plan, thresholds)
        kept = np.flatnonzero(keep)
        ids = labels.ids[kept]
        if plan.modality == "text":
            payloads = [{"text": t.encode("utf-8")} for t in inputs]
            kept_texts = [inputs[i] for i in kept.tolist()]
            if self._split == "train":
                counts = text.count_tokens(kept_texts) if kept_texts else {}
                yield beam.pvalue.TaggedOutput(self.TOKENS, dict(counts))
            summary = statistics.summarize_texts(ids, kept_texts, text.token_lengths(kept_texts))
        else:
            flat = inputs.reshape(inputs.shape[0], -1)
            payloads = [{"image": row.tobytes()} for row in flat]
            summary = statistics.summarize_images(ids, inputs[kept])
        encoded = [
            records.encode(example_id, label, clean_label, **payloads[i])
            for i, example_id, label, clean_label in zip(
                kept.tolist(),
                ids.tolist(),
                labels.noisy[kept].tolist(),
                labels.clean[kept].tolist(),
                strict=True,
            )
        ]
        shard_of = ids % plan.num_shards
        for shard in range(plan.num_shards):
            members = np.flatnonzero(shard_of == shard)
            yield shard, (ids[members].tolist(), [encoded[i] for i in members.tolist()])
        counts = corruption.transition_counts(
            labels.clean[kept], labels.noisy[kept], plan.num_classes
        )
        yield beam.pvalue.TaggedOutput(self.KEPT, (counts, summary))


class _WriteShard(beam.DoFn):
    """Writes one shard file from its grouped `(ids, records)` batches.

    The records are sorted by id and written to `<split>-SSSSS-of-NNNNN.tfrecord`
    in `out_dir` through a temporary file renamed once complete
    (`records.write_shard`); a shard with no records is an empty file. So the bytes
    of a shard depend only on the config and the data, not on the runner, the
    worker count, the chunking or the order in which chunks finish.

    Memory: the GroupByKey hands all of a shard's records to one call, so a worker
    holds about N / num_shards records at once, N the records kept in the split
    (Fashion-MNIST train, 4 shards: ~9.6k records, ~8.4 MB; at most 60k / 4 = 15k).
    Fine at this scale; for bigger data raise `config.data.num_shards`.
    """

    def __init__(self, out_dir: str, split: str, num_shards: int):
        self._out_dir = out_dir
        self._split = split
        self._num_shards = num_shards

    def process(self, item):
        shard, batches = item
        ids, encoded = [], []
        for batch_ids, batch_records in batches:
            ids.extend(batch_ids)
            encoded.extend(batch_records)
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        name = records.shard_name(self._split, shard, self._num_shards)
        records.write_shard(os.path.join(self._out_dir, name), (encoded[i] for i in order))
        yield name


def _write_vocabulary(counts: dict, path: str, max_tokens: int) -> None:
    text.write_vocabulary(path, text.build_vocabulary(counts, max_tokens))


def _write_stats(_, path: str, *, before, kept, targets) -> None:
    """The split's JSON: counts before (None: uncut, the kept ones) and after the cut,
    the cut's targets and the kept records' summary."""
    after, summary = kept
    before = after if before is None else before
    stats = {
        "transition_counts_before_cut": np.asarray(before).tolist(),
        "transition_counts": np.asarray(after).tolist(),
        "targets": None if targets is None else np.asarray(targets).tolist(),
        "summary": summary.to_json(),
    }
    with open(path, "w") as f:
        json.dump(stats, f)


# ----------------------------------------------------------------------------------
# The Beam graph


def _chunks(p, plan: Plan, split: str):
    n, size = plan.sizes[split], plan.chunk_size
    ranges = [(s, min(s + size, n)) for s in range(0, n, size)]
    # Reshuffle so a multi-worker runner spreads the chunks instead of reading them
    # all in the worker that created the list.
    return p | f"{split}/Chunks" >> beam.Create(ranges) | f"{split}/Spread" >> beam.Reshuffle()


def _build_split(p, plan: Plan, split: str, out_dir: str) -> None:
    """One split's part of the Beam graph (the module docstring draws it); one
    pipeline expression, which reads better whole than cut into pieces."""
    C = plan.num_classes
    chunks = _chunks(p, plan, split)
    cut = split == "train" and bool(plan.cut_classes)
    if split == "train":
        labels = chunks | f"{split}/ReadLabels" >> beam.Map(
            preprocess_plan.read_labels, plan, split
        )
        before = (
            labels
            | f"{split}/ChunkCounts" >> beam.Map(preprocess_plan.chunk_counts, plan)
            | f"{split}/CountsBeforeCut" >> beam.CombineGlobally(SumCounts(C))
        )
    if cut:
        bounds = plan.candidate_bounds(split)
        targets = before | f"{split}/Targets" >> beam.Map(preprocess_plan.cut_targets, plan)
        thresholds = (
            labels
            | f"{split}/Candidates" >> beam.FlatMap(preprocess_plan.chunk_candidates, plan, bounds)
            | f"{split}/SmallestPerClass" >> beam.CombinePerKey(SmallestByKey())
            | f"{split}/Thresholds"
            >> beam.Map(preprocess_plan.threshold, beam.pvalue.AsSingleton(targets))
        )
        encode = beam.ParDo(_EncodeChunk(plan, split), thresholds=beam.pvalue.AsDict(thresholds))
    else:
        targets = None
        encode = beam.ParDo(_EncodeChunk(plan, split))
    encoded = chunks | f"{split}/Encode" >> encode.with_outputs(
        _EncodeChunk.KEPT, _EncodeChunk.TOKENS, main="records"
    )
    if plan.modality == "text" and split == "train":
        _ = (
            encoded[_EncodeChunk.TOKENS]
            | f"{split}/TokenCounts" >> beam.CombineGlobally(SumTokenCounts())
            | f"{split}/Vocabulary"
            >> beam.Map(_write_vocabulary, os.path.join(out_dir, text.VOCAB_FILE), plan.max_tokens)
        )
    _ = (
        encoded.records
        | f"{split}/GroupByShard" >> beam.GroupByKey()
        | f"{split}/WriteShards" >> beam.ParDo(_WriteShard(out_dir, split, plan.num_shards))
    )
    # One combiner for both halves of KEPT: a separate one each costs a Beam stage.
    kept = encoded[_EncodeChunk.KEPT] | f"{split}/CountsAfterCut" >> beam.CombineGlobally(
        TupleCombineFn(SumCounts(C), MergeSummaries())
    )
    if split != "train":
        before = None

    def side(pcoll):
        return None if pcoll is None else beam.pvalue.AsSingleton(pcoll)

    _ = (
        p
        | f"{split}/Once" >> beam.Create([None])
        | f"{split}/Stats"
        >> beam.Map(
            _write_stats,
            os.path.join(out_dir, preprocess_manifest.STATS_FILE.format(split=split)),
            before=side(before),
            kept=side(kept),
            targets=side(targets),
        )
    )


def pipeline_options(beam_args=()) -> PipelineOptions:
    """Default options (the in-process FnApiRunner) overridden by `beam_args`.

    `--runner=DaskRunner` (or Beam's class path for it) becomes
    `pipeline.data.dask_runner.DaskRunner`, which fixes two faults of Beam 2.77's that
    lose this job's outputs (see that module). A runner given by its class path has
    its module imported first: that defines the runner's own options
    (`--dask_client_address`), which Beam would otherwise only learn of when it
    creates the runner, after this check.

    Raises:
      PipelineError: for an option no Beam options class knows (Beam would otherwise
        drop it with a warning), or a runner module that cannot be imported.
    """
    options = PipelineOptions([*DEFAULT_BEAM_ARGS, *beam_args])
    runner = options.view_as(StandardOptions).runner
    if runner in _DASK_RUNNER_NAMES:
        runner = options.view_as(StandardOptions).runner = _DASK_RUNNER
    if "." in runner:
        module = runner.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise PipelineError(f"--runner={runner}: cannot import {module}: {e}") from e
    known = options.get_all_options()
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(known)
    if unknown:
        names = ", ".join(f"--{name}" for name in sorted(unknown))
        raise PipelineError(f"unknown Beam option(s) in --beam_args: {names}")
    return options


def _run_beam(plan: Plan, out_dir: str, beam_args) -> None:
    options = pipeline_options(beam_args)
    logging.info("Beam options: %s", options.get_all_options(drop_default=True))
    p = beam.Pipeline(options=options)
    for split in records.SPLITS:
        _build_split(p, plan, split, out_dir)
    quiet = _DropPipelineErrors()
    for name in _BEAM_ERROR_LOGGERS:
        py_logging.getLogger(name).addFilter(quiet)
    try:
        p.run().wait_until_finish()
    except PipelineError as e:
        # In-process runners re-raise our error with " [while running 'step']" added.
        raise PipelineError(_STEP_SUFFIX.sub("", str(e))) from None
    except Exception as e:
        # Out-of-process workers report errors as text: recover ours from it.
        match = re.search(r"PipelineError: (.+)", str(e))
        if match:
            raise PipelineError(_STEP_SUFFIX.sub("", match.group(1))) from e
        raise
    finally:
        for name in _BEAM_ERROR_LOGGERS:
            py_logging.getLogger(name).removeFilter(quiet)


# Beam logs a failing bundle's traceback here before re-raising the error.
_BEAM_ERROR_LOGGERS = ("apache_beam.runners.worker.bundle_processor", "apache_beam.runners.common")
_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


class _DropPipelineErrors(py_logging.Filter):
    """Drops Beam's log of a PipelineError: the stage reports it once, plainly."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, PipelineError)


# ----------------------------------------------------------------------------------
# Entry points


def run(config, workdir: str, beam_args=()) -> None:
    """Runs the stage: writes `<workdir>/preprocess/` (shards, manifest.json, the data
    validation files) and, on a workdir's first run, `<workdir>/schema/schema.pbtxt`.

    Args:
      config: the experiment config (reads `config.data` and `config.seed`).
      workdir: the pipeline's working directory.
      beam_args: extra Beam pipeline options, e.g. ["--direct_num_workers=2"].

    Raises:
      PipelineError: on a config or data problem, or a hard anomaly of the data
        against its schema; `<workdir>/preprocess` is then not created.
    """
    plan = make_plan(config)
    val_fraction = validation.checked_fraction(config.data)
    logging.info(
        "preprocess: %s from %s, %s examples, noise %s, imbalance %s",
        config.data.dataset,
        plan.source.description,
        plan.sizes,
        config.data.noise.kind,
        config.data.imbalance.kind,
    )
    schema = validate.load_schema(config, workdir)
    with stage.stage_output(workdir, STAGE, config) as out_dir:
        _run_beam(plan, out_dir, list(beam_args))
        split_stats = preprocess_manifest.read_split_stats(out_dir)
        manifest = preprocess_manifest.manifest(config, plan, out_dir, split_stats)
        # Statistics, schema, anomalies: raises on a hard anomaly (nothing completes).
        manifest["data_validation"] = validate.validate_output(plan, schema, out_dir, split_stats)
        if val_fraction:
            train = datasets.read_shard_labels(out_dir, "train")
            manifest["validation"] = validation.manifest_entry(
                train["id"], train["label"], fraction=val_fraction, seed=plan.seed,
                num_classes=plan.num_classes,
            )  # fmt: skip
        stage.write_json(os.path.join(out_dir, MANIFEST), manifest)
        train = manifest["splits"]["train"]
        logging.info(
            "preprocess: train %d -> %d examples; per class after the cut (noisy): %s",
            train["num_source_examples"],
            train["num_examples"],
            train["counts_after_cut"]["noisy"],
        )


if __name__ == "__main__":
    # Run the importable module's `run`, not this __main__ copy's, so Beam pickles the
    # DoFns by reference to `pipeline.preprocess` (workers import it by that name).
    from pipeline import preprocess

    # Beam's INFO log names every fused stage; keep warnings and errors only.
    py_logging.getLogger("apache_beam").setLevel(py_logging.WARNING)
    cli.run_stage(STAGE, preprocess.run)
