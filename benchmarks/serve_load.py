r"""Load test of pipeline.serve: concurrent clients on 127.0.0.1, single-image requests.

Starts `python -m pipeline.serve` in a child process (or uses --url), then
--concurrency client threads, each on its own keep-alive connection, send
--requests POST :predict requests in all, each with one uint8 image in row format.
Prints one JSON object: p50 / p99 / max latency (ms), requests/s, error count.

With no --model_base_path, an untrained network of configs/fashion_mnist_hetero.py
(the default config's ResNet, 28x28x1) is exported to a temporary directory first.

  python benchmarks/serve_load.py
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


def export_default_model(base: str) -> None:
    sys.path.insert(0, REPO)
    from configs import fashion_mnist_hetero
    from pipeline import export, modeling

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


def image_shape(url: str) -> tuple[int, ...]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", u.path + "/metadata")
    meta = json.loads(conn.getresponse().read())
    conn.close()
    shape = meta["metadata"]["signature_def"]["serving_default"]["inputs"]["image"]["shape"]
    return tuple(shape[1:])


def load(url: str, *, requests: int, concurrency: int, shape, seed: int = 0) -> dict:
    u = urllib.parse.urlsplit(url)
    path = u.path + ":predict"
    rng = np.random.default_rng(seed)
    bodies = [
        json.dumps({"instances": rng.integers(0, 256, (1, *shape)).tolist()}).encode()
        for _ in range(16)
    ]
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
        "image_shape": list(shape),
        "errors": errors[0],
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
            "max": round(float(ms.max()), 3),
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=50, help="requests before timing")
    parser.add_argument("--model_base_path", default="", help="export/<name> to serve")
    parser.add_argument("--url", default="", help="a running server's /v1/models/<name>")
    args = parser.parse_args()
    proc, tmp = None, None
    try:
        url = args.url
        if not url:
            base = args.model_base_path
            if not base:
                tmp = tempfile.TemporaryDirectory()
                base = os.path.join(tmp.name, "har")
                export_default_model(base)
            proc, url = start_server(base)
        shape = image_shape(url)
        load(url, requests=args.warmup, concurrency=args.concurrency, shape=shape, seed=1)
        result = load(url, requests=args.requests, concurrency=args.concurrency, shape=shape)
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
