"""manifest.json of the preprocess stage: what was read, corrupted, cut and written.

`pipeline.data.datasets.load_manifest` reads it back for the later stages.
"""

from __future__ import annotations

import os

import numpy as np

from har_tf import corruption
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data import records, text
from pipeline.data.plan import Plan

# The per-split counts the Beam job writes, folded into manifest.json afterwards.
STATS_FILE = "_stats-{split}.json"


def split_entry(stats: dict, plan: Plan, split: str, out_dir: str) -> dict:
    """One split's manifest entry: counts before and after the cut, shards."""
    before = np.asarray(stats["transition_counts_before_cut"], np.int64)
    after = np.asarray(stats["transition_counts"], np.int64)
    shards = [os.path.basename(p) for p in records.shard_paths(out_dir, split)]
    expected = [records.shard_name(split, s, plan.num_shards) for s in range(plan.num_shards)]
    if shards != expected:
        raise PipelineError(f"expected the {split} shards {expected}, found {shards}")
    return {
        "num_source_examples": plan.sizes[split],
        "num_examples": int(after.sum()),
        "counts_before_cut": {
            "clean": before.sum(axis=1).tolist(),
            "noisy": before.sum(axis=0).tolist(),
        },
        "counts_after_cut": {
            "noisy": after.sum(axis=0).tolist(),
            "clean": after.sum(axis=1).tolist(),
        },
        "transition_counts_before_cut": before.tolist(),
        "transition_counts": after.tolist(),
        "transition_rates": corruption.row_normalize(after).tolist(),
        "shards": shards,
    }


def read_split_stats(out_dir: str) -> dict[str, dict]:
    """Per split, the stats file the Beam job wrote into `out_dir` (read, then deleted):
    transition counts before and after the cut, targets, and the records' summary
    (pipeline/data_validation/statistics.py)."""
    out = {}
    for split in records.SPLITS:
        path = os.path.join(out_dir, STATS_FILE.format(split=split))
        out[split] = stage.read_json(path)
        os.remove(path)
    return out


def manifest(config, plan: Plan, out_dir: str, split_stats: dict[str, dict]) -> dict:
    """manifest.json's content, from the plan and `read_split_stats`."""
    splits = {
        split: split_entry(split_stats[split], plan, split, out_dir) for split in records.SPLITS
    }
    targets = split_stats["train"]["targets"]
    out = {
        "dataset": config.data.dataset,
        "source": plan.source.description,
        "modality": plan.modality,
        "seed": plan.seed,
        "num_classes": plan.num_classes,
        "image_shape": list(plan.image_shape),
        "noise": {
            **config.data.noise.to_dict(),
            "transition_matrix": plan.noise_matrix.tolist(),
        },
        "imbalance": {**config.data.imbalance.to_dict(), "targets": targets},
        "splits": splits,
    }
    split_info = plan.source.split_info()
    if split_info is not None:
        out["test_split"] = split_info
    if plan.modality == "text":
        vocabulary = text.read_vocabulary(os.path.join(out_dir, text.VOCAB_FILE))
        if not vocabulary:
            raise PipelineError("the kept train texts hold no token: the vocabulary is empty")
        out["text"] = {
            "vocabulary_file": text.VOCAB_FILE,
            "vocabulary_size": len(vocabulary),
            "max_tokens": plan.max_tokens,
            "sequence_length": int(config.data.text.sequence_length),
            "standardize": "lower, <br /> to space, ASCII punctuation removed",
        }
    return out
