r"""Load test of pipeline.serve: concurrent clients on 127.0.0.1, single-example requests.

Starts `python -m pipeline.serve` in a child process (or uses --url), then
--concurrency client threads, each on its own keep-alive connection, send
--requests POST :predict requests in all, each with one example in row format: a
uint8 image for an image model, a review string for a text model (the kind is
read from the model's metadata).
Prints one JSON object: p50 / p99 / max latency (ms), requests/s, error count.

With no --model_base_path, an untrained network is exported to a temporary
directory first: `--model image` (default) the ResNet of
configs/fashion_mnist_hetero.py (28x28x1); `--model text` the paper's IMDB BiLSTM
of configs/imdb_hetero.py (2 x 256 units, 256 tokens) with a vocabulary of
--vocab_size generated words. Text requests are generated reviews of
--review_words words (IMDB's train reviews average about 230).

  python benchmarks/serve_load.py
  python benchmarks/serve_load.py --model text --requests 500 --concurrency 2
  python benchmarks/serve_load.py --requests 2000 --concurrency 4 \
      --model_base_path runs/quickstart/export/har
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def words(n: int) -> list[str]:
    """n distinct lowercase pseudo-words (what the vocabulary and the reviews use)."""
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(letters, size=int(rng.integers(2, 9)))))
    return sorted(out)


def export_default_model(base: str, kind: str, vocab_size: int) -> None:
    sys.path.insert(0, REPO)
    from pipeline import export
    from pipeline.data import text
    from pipeline.training import modeling

    if kind == "text":
        from configs import imdb_hetero

        config = imdb_hetero.get_config()
        config.data.text.max_tokens = vocab_size + 2
        layer = text.vectorizer(words(vocab_size), config.data.text.sequence_length)
        export.export_saved_model(
            modeling.build_backbone(config), os.path.join(base, "1"), vectorizer=layer
        )
        return
    from configs import fashion_mnist_hetero

    config = fashion_mnist_hetero.get_config()
    export.export_saved_model(
        modeling.build_backbone(config), os.path.join(base, "1"), config.data.image_shape
    )


def start_server(base: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.serve",
            f"--model_base_path={base}",
            "--host=127.0.0.1",
            "--port=0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/v1/models/[^\s]+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, m.group(1)


def input_spec(url: str) -> tuple[str, tuple[int, ...]]:
    """("image", image shape) or ("text", ()) from the served model's metadata."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", u.path + "/metadata")
    meta = json.loads(conn.getresponse().read())
    conn.close()
    inputs = meta["metadata"]["signature_def"]["serving_default"]["inputs"]
    if "text" in inputs:
        return "text", ()
    return "image", tuple(inputs["image"]["shape"][1:])


def request_bodies(kind: str, shape, *, seed: int, vocab_size: int, review_words: int):
    """16 request bodies, each with one example in row format."""
    rng = np.random.default_rng(seed)
    if kind == "text":
        vocab = np.array(words(vocab_size))
        reviews = [" ".join(rng.choice(vocab, size=review_words)) for _ in range(16)]
        return [json.dumps({"instances": [review]}).encode() for review in reviews]
    return [
        json.dumps({"instances": rng.integers(0, 256, (1, *shape)).tolist()}).encode()
        for _ in range(16)
    ]


def load(url: str, *, requests: int, concurrency: int, bodies) -> dict:
    u = urllib.parse.urlsplit(url)
    path = u.path + ":predict"
    lock = threading.Lock()
    next_index = [0]
    latencies = np.zeros(requests)
    errors = [0]

    def client():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= requests:
                break
            start = time.perf_counter()
            try:
                conn.request(
                    "POST", path, body=bodies[i % len(bodies)],
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and b'"predictions"' in body
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            latencies[i] = time.perf_counter() - start
            if not ok:
                with lock:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = latencies * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "errors": errors[0],
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
            "max": round(float(ms.max()), 3),
        },
    }


def rss_mb(pid: int) -> float | None:
    """The resident memory of process `pid` (Linux /proc), in MB; None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=50, help="requests before timing")
    parser.add_argument("--model_base_path", default="", help="export/<name> to serve")
    parser.add_argument("--url", default="", help="a running server's /v1/models/<name>")
    parser.add_argument("--model", choices=("image", "text"), default="image")
    parser.add_argument("--vocab_size", type=int, default=20_000, help="--model text")
    parser.add_argument("--review_words", type=int, default=230, help="words per review")
    args = parser.parse_args()
    proc, tmp = None, None
    try:
        url = args.url
        if not url:
            base = args.model_base_path
            if not base:
                tmp = tempfile.TemporaryDirectory()
                base = os.path.join(tmp.name, "har")
                export_default_model(base, args.model, args.vocab_size)
            proc, url = start_server(base)
        kind, shape = input_spec(url)
        bodies = {
            seed: request_bodies(
                kind, shape, seed=seed, vocab_size=args.vocab_size, review_words=args.review_words
            )
            for seed in (0, 1)
        }
        load(url, requests=args.warmup, concurrency=args.concurrency, bodies=bodies[1])
        rss_before = rss_mb(proc.pid) if proc is not None else None
        result = load(url, requests=args.requests, concurrency=args.concurrency, bodies=bodies[0])
        # The server's resident memory after warm-up and after the timed load: a leak
        # per request would show as growth.
        result["server_rss_mb"] = {
            "before": rss_before,
            "after": rss_mb(proc.pid) if proc is not None else None,
        }
        result["input"] = (
            {"kind": kind, "image_shape": list(shape)}
            if kind == "image"
            else {
                "kind": kind,
                "review_words": args.review_words,
            }
        )
        result["url"] = url
        result["cpu_count"] = os.cpu_count()
        print(json.dumps(result, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
