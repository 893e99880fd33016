r"""Step time and peak memory of ERM, uniform-reg and HAR training steps.

ResNet-32 (the authors' network), batch 128 of 32x32x3, all cores. Times are
measured in one process with the three kinds of step interleaved (round-robin), so
that machine noise hits all three alike; each figure is the median over rounds.
Peak memory is measured in separate child processes (one per kind) by TensorFlow's
own allocator: the children run with TF_CPU_ALLOCATOR_USE_BFC=true, which makes
`tf.config.experimental.get_memory_info("CPU:0")` report the peak bytes allocated.
After a warm-up step the stats are reset and one more step is measured: the
step's working memory (saved activations, the gradient graph's intermediates,
gradients, variables). RSS cannot show this: the allocator keeps its pool.

  python benchmarks/step_time.py --json
  python benchmarks/step_time.py --json --checkpoint --reg_every 4
  python benchmarks/step_time.py --rounds 5 --steps 5 --batch 64 --depth 20

`--checkpoint` adds HAR with `checkpoint_layers` (recompute each block: the same
objective), `--reg_every K` HAR regularized on every K-th step (an approximation),
and both together the two combined; each also gets its peak memory, measured over a
whole period of K steps.
  python benchmarks/step_time.py --model bilstm --batch 64 --rounds 3 --steps 2

`--model bilstm`: the paper's IMDB network (2 x 256-unit BiLSTM, embedding 128,
vocabulary 20,000, configs/imdb_hetero.py) on random token ids [batch, 256]
(`--seq_len`), taps on its LSTMs, HAR in the per-example scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: importing har_tf turns oneDNN on before TensorFlow loads (har_tf/onednn.py).
import har_tf  # noqa: E402,F401

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

from har_tf import HARModel  # noqa: E402
from har_tf.models import (  # noqa: E402
    block_output_layers,
    cifar_resnet,
    imdb_bilstm,
    rnn_tap_layers,
)

KINDS = {"erm": (0.0, False), "unif": (10.0, False), "har": (10.0, True)}
# --checkpoint adds "har_ckpt": HAR recomputing each residual block instead of keeping
# it, HARModel(checkpoint_layers=block_output_layers(backbone)); same objective.
# Both flags add "har_every_ckpt", the two combined.
OPTIONAL = {kind: (10.0, True) for kind in ("har_every", "har_ckpt", "har_every_ckpt")}
# --reg_every K adds "har_every": HAR regularized on every K-th step only (the opt-in
# approximation, HARModel(reg_every=K)); its figure is the mean over K * steps.


def build(kind: str, args) -> HARModel:
    lam, per_class = {**KINDS, **OPTIONAL}[kind]
    reg_every = args.reg_every if kind.startswith("har_every") else 1
    keras.utils.set_random_seed(0)
    if args.model == "bilstm":
        backbone = imdb_bilstm(vocab_size=20_000, sequence_length=args.seq_len)
        tau = np.array([0.3, 1.0]) if per_class else None
        model = HARModel(
            backbone,
            lam=lam / 100,  # 0.1, the paper's IMDB strength
            tau=tau,
            tap_layers=rnn_tap_layers(backbone),
            scale="per_example",
            reg_every=reg_every,
        )
        optimizer = keras.optimizers.Adam(1e-3)
    else:
        tau = np.linspace(0.05, 1.0, 10) if per_class else None
        backbone = cifar_resnet(depth=args.depth)
        model = HARModel(
            backbone,
            lam=lam,
            tau=tau,
            weight_decay=1e-4,
            reg_every=reg_every,
            checkpoint_layers=block_output_layers(backbone) if kind.endswith("ckpt") else None,
        )
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def batch(args):
    rng = np.random.default_rng(0)
    if args.model == "bilstm":
        x = rng.integers(2, 20_000, size=(args.batch, args.seq_len)).astype("int64")
        return x, rng.integers(0, 2, size=args.batch).astype("int32")
    x = rng.uniform(0, 1, size=(args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.batch).astype("int32")
    return x, y


def time_steps(model, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def peak_child(kind: str, args) -> float:
    """Runs --peak KIND in a child process with the BFC CPU allocator; returns MB."""
    cmd = [sys.executable, os.path.abspath(__file__), "--peak", kind]
    cmd += ["--depth", str(args.depth), "--batch", str(args.batch)]
    cmd += ["--model", args.model, "--seq_len", str(args.seq_len)]
    cmd += ["--reg_every", str(args.reg_every)]
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def peak(kind: str, args) -> None:
    import tensorflow as tf

    model = build(kind, args)
    x, y = batch(args)
    # har_every kinds: whole periods, so that the measured steps hold a regularized one.
    steps = args.reg_every if kind.startswith("har_every") else 1
    for _ in range(steps):  # warm-up: tracing has its own one-off allocations
        model.train_on_batch(x, y)
    tf.config.experimental.reset_memory_stats("CPU:0")
    for _ in range(steps):
        model.train_on_batch(x, y)
    print(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet32", "bilstm"), default="resnet32")
    parser.add_argument("--seq_len", type=int, default=256, help="bilstm: tokens per example")
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per kind per round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no_memory", action="store_true", help="skip the memory children")
    parser.add_argument("--reg_every", type=int, default=1, help="K > 1: time har_every too")
    parser.add_argument(
        "--checkpoint", action="store_true", help="time har_ckpt too (HARModel checkpoint_layers)"
    )
    parser.add_argument("--peak", choices=sorted({**KINDS, **OPTIONAL}), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpoint and args.model != "resnet32":
        parser.error("--checkpoint cuts the ResNet at its blocks: use it with --model resnet32")
    if args.peak:
        peak(args.peak, args)
        return

    x, y = batch(args)
    kinds = list(KINDS) + ["har_every"] * (args.reg_every > 1) + ["har_ckpt"] * args.checkpoint
    kinds += ["har_every_ckpt"] * (args.reg_every > 1 and args.checkpoint)
    models = {kind: build(kind, args) for kind in kinds}
    for model in models.values():  # trace, build, warm up
        time_steps(model, x, y, 2)
    times = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind, model in models.items():
            # A whole number of regularization periods for har_every.
            steps = args.steps * (args.reg_every if kind.startswith("har_every") else 1)
            times[kind].append(time_steps(model, x, y, steps))
    med = {kind: statistics.median(t) for kind, t in times.items()}
    result = {
        "erm_s": round(med["erm"], 4),
        "unif_s": round(med["unif"], 4),
        "har_s": round(med["har"], 4),
        "ratio": round(med["har"] / med["erm"], 3),
        # Ratio within each round, then the median: robust to drifting machine load.
        "ratio_paired": round(
            statistics.median(h / e for h, e in zip(times["har"], times["erm"], strict=True)), 3
        ),
        **(
            {
                "har_every_s": round(med["har_every"], 4),
                "reg_every": args.reg_every,
                "ratio_every": round(med["har_every"] / med["erm"], 3),
            }
            if args.reg_every > 1
            else {}
        ),
        **(
            {
                "har_ckpt_s": round(med["har_ckpt"], 4),
                "ratio_ckpt": round(med["har_ckpt"] / med["erm"], 3),
            }
            if args.checkpoint
            else {}
        ),
        **(
            {
                "har_every_ckpt_s": round(med["har_every_ckpt"], 4),
                "ratio_every_ckpt": round(med["har_every_ckpt"] / med["erm"], 3),
            }
            if args.checkpoint and args.reg_every > 1
            else {}
        ),
        "model": args.model,
        "depth": args.depth,
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    if not args.no_memory:
        erm_mb, har_mb = peak_child("erm", args), peak_child("har", args)
        result.update(
            erm_peak_mb=round(erm_mb, 1),
            har_peak_mb=round(har_mb, 1),
            peak_ratio=round(har_mb / erm_mb, 3) if erm_mb > 0 else None,
        )
        for kind in kinds[len(KINDS) :]:  # the opt-in kinds asked for
            mb = peak_child(kind, args)
            result[f"{kind}_peak_mb"] = round(mb, 1)
            result[f"peak_ratio_{kind.removeprefix('har_')}"] = (
                round(mb / erm_mb, 3) if erm_mb > 0 else None
            )
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
