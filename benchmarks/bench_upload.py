"""Upload throughput and memory of bpsync's client against `curl --data-binary`.

    python benchmarks/bench_upload.py [--size 500MB] [--runs 3]

Generates a table with gen_table (in a temp dir, deleted afterwards), starts the emulator
(`python -m bpsync.emulator`, rate limit off), uploads the table once with bpsync's client in a
child process to measure its peak RSS (`ru_maxrss` of RUSAGE_CHILDREN; required ≤ 80 MB), then
`--runs` times each with the client and with curl, interleaved, waiting for every job and a disk
sync between uploads so the emulator's CSV check and writeback never overlap a transfer.
Reports median seconds, MB/s and the client/curl ratio (required ≤ 1.5); exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from gen_table import parse_size, write_table  # noqa: E402

# This driver stays small on purpose (no httpx, emulator in its own process): on Linux a
# child's ru_maxrss starts from its parent's high-water mark (fork/vfork before exec), so a
# big parent would inflate the client's figure.
TOKEN = "bench-token"
UPLOAD_CONTENT_TYPE = "text/csv; charset=utf8"  # bpsync.bigpanda.facts.UPLOAD_CONTENT_TYPE
V1_ENRICHMENTS = "/resources/v1.0/enrichments"
V1_JOBS = "/resources/v1.0/enrichment-jobs"
MAX_RATIO = 1.5
MAX_RSS_MB = 80.0
FIELDS = [
    {"title": t, "type": "query_tag" if t == "host" else "result_tag"}
    for t in ("host", "cmdb_ci", "environment", "support_group", "runbook_url")
]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Runs in a fresh interpreter so its peak RSS is the client's.
CHILD = """
import json, resource, sys, time
from pathlib import Path
from bpsync.bigpanda.client import BigPandaClient, RateLimiter
url, token, eid, path = sys.argv[1:5]
with BigPandaClient(url, token, rate_limiter=RateLimiter(1000)) as client:
    began = time.perf_counter()
    receipt = client.upload_table(eid, Path(path))
    seconds = time.perf_counter() - began
print(json.dumps({"seconds": seconds, "job_id": receipt.job_id, "bytes": receipt.bytes_sent,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "bpsync.emulator", "--port", "0", "--no-rate-limit",
           "--job-seconds", "0.1"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[-1]


def client_upload(url: str, eid: str, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-c", CHILD, url, TOKEN, eid, str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV)
    return dict(json.loads(out.stdout))


def curl_upload(url: str, eid: str, path: Path, answer: Path) -> tuple[float, str]:
    cmd = [
        "curl", "-sS", "-o", str(answer), "-w", "%{http_code} %{time_total}",
        "-X", "POST", "--data-binary", f"@{path}",
        "-H", f"Content-Type: {UPLOAD_CONTENT_TYPE}",
        "-H", f"Authorization: Bearer {TOKEN}",
        f"{url}{V1_ENRICHMENTS}/{eid}/map",
    ]  # fmt: skip
    status, seconds = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    if status != "202":
        raise SystemExit(f"curl upload answered HTTP {status}")
    return float(seconds), str(json.loads(answer.read_text())["job_id"])


def settle(url: str, job_id: str) -> None:
    """Let the emulator finish checking the upload, and the disk flush it, before the next."""
    while (job := call(f"{url}{V1_JOBS}/{job_id}"))["status"] not in ("done", "failed"):
        time.sleep(0.2)
    if job["status"] != "done":
        raise SystemExit(f"upload job failed: {job}")
    os.sync()


def run(size: int, runs: int) -> int:
    if shutil.which("curl") is None:
        raise SystemExit("curl is required")
    workdir = Path(tempfile.mkdtemp(prefix="bpsync-bench-"))
    proc, url = start_emulator()
    try:
        path = workdir / "bench.csv"
        began = time.perf_counter()
        rows = write_table(path, size)
        actual = path.stat().st_size
        print(f"table: {actual / 1e6:.1f} MB, {rows} rows (generated in "
              f"{time.perf_counter() - began:.1f}s)")  # fmt: skip
        body = {"type": "mapping", "config": {"map_name": "bench", "fields": FIELDS}}
        eid = call(url + V1_ENRICHMENTS, "POST", body)["id"]
        # Phase 1: one client upload alone, for its peak RSS (curl, which loads the whole
        # file into memory, must not have run yet: RUSAGE_CHILDREN keeps the maximum).
        first = client_upload(url, eid, path)
        assert first["bytes"] == actual
        settle(url, first["job_id"])
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"client ru_maxrss seen by the child itself: {first['maxrss_kb'] / 1024:.1f} MB")
        # Phase 2: timed runs, interleaved so page-cache writeback and other noise hit both.
        client_runs, curl_runs = [], []
        for _ in range(runs):
            result = client_upload(url, eid, path)
            client_runs.append(float(result["seconds"]))
            settle(url, result["job_id"])
            seconds, job_id = curl_upload(url, eid, path, workdir / "answer.json")
            curl_runs.append(seconds)
            settle(url, job_id)
        return report(actual, client_runs, curl_runs, rss_mb)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def report(size: int, client_runs: list[float], curl_runs: list[float], rss_mb: float) -> int:
    client_s, curl_s = statistics.median(client_runs), statistics.median(curl_runs)
    ratio = client_s / curl_s
    print(f"bpsync client: median {client_s:.2f}s  {size / 1e6 / client_s:.0f} MB/s  "
          f"runs {', '.join(f'{s:.2f}' for s in client_runs)}")  # fmt: skip
    print(f"curl:          median {curl_s:.2f}s  {size / 1e6 / curl_s:.0f} MB/s  "
          f"runs {', '.join(f'{s:.2f}' for s in curl_runs)}")  # fmt: skip
    ok_ratio, ok_rss = ratio <= MAX_RATIO, rss_mb <= MAX_RSS_MB
    print(f"ratio client/curl: {ratio:.2f}x (required <= {MAX_RATIO}x) "
          f"{'OK' if ok_ratio else 'FAIL'}")  # fmt: skip
    print(f"client peak RSS: {rss_mb:.1f} MB (required <= {MAX_RSS_MB:.0f} MB) "
          f"{'OK' if ok_rss else 'FAIL'}")  # fmt: skip
    return 0 if ok_ratio and ok_rss else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("500MB"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    return run(args.size, args.runs)


if __name__ == "__main__":
    sys.exit(main())
