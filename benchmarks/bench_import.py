"""`bpsync import NAME ID --generate` of a 100,000-row v2.1 table from the emulator.

    python benchmarks/bench_import.py [--rows 100000]

Starts the emulator in its own process with its 5 requests/second limit ON, creates a v2.1
enrichment and fills its table through the emulator's admin route, then runs
`python -m bpsync --debug import bench ID --generate` as a child process and measures its
wall time and peak RSS (`ru_maxrss` of that child, via wait4). The debug log lists every
request bpsync sent, so the floor is computed for what was actually served:
requests ÷ 4 per second (bpsync's client limit, facts.CLIENT_RATE_LIMIT_PER_SECOND).
Requires wall time within 10% of that floor and peak RSS ≤ 100 MB; exits 1 on a miss.

bpsync asks for per_page=1000 (facts.READ_REQUEST_PER_PAGE): BigPanda documents the default
(100) but no maximum, so asking for larger pages is allowed; the client never relies on getting
them (it reads until the announced total), so a server that serves 100 only costs time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
V21_ENRICHMENTS = "/resources/v2.1/mapping-enrichment"
CLIENT_PER_SECOND = 4.0  # bpsync.bigpanda.facts.CLIENT_RATE_LIMIT_PER_SECOND
MAX_OVER_FLOOR = 0.10
MAX_RSS_MB = 100.0
FIELDS = [
    {"title": t, "type": "query_tag" if t == "host" else "result_tag"}
    for t in ("host", "cmdb_ci", "environment", "support_group", "runbook_url")
]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
REQUEST_LINE = re.compile(r"^(GET|POST|PATCH) (\S+) -> ", re.MULTILINE)


def call(url: str, method: str = "GET", body: Any = None, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "text/csv" if raw is not None else "application/json")
    with urllib.request.urlopen(request, timeout=120) as response:
        text = response.read()
    return json.loads(text) if text else None


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "bpsync.emulator", "--port", "0", "--job-seconds", "0.1"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[-1]


def table_csv(rows: int) -> bytes:
    lines = ["host,cmdb_ci,environment,support_group,runbook_url"]
    lines += [
        f"host-{i:07d}.example.com,CI{i:07d},{('prod', 'staging', 'dev')[i % 3]},"
        f"team-{i % 97},https://runbooks.example.com/{i}"
        for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def run_import(repo: Path, url: str, eid: str, log: Path) -> tuple[float, float, int]:
    env = {**ENV, "BIGPANDA_API_URL": url, "BIGPANDA_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "bpsync", "--debug", "import", "bench", eid, "--generate"]
    with log.open("w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def run(rows: int) -> int:
    proc, url = start_emulator()
    try:
        with tempfile.TemporaryDirectory(prefix="bpsync-bench-import-") as tmp:
            repo = Path(tmp) / "repo"
            (repo / "tables").mkdir(parents=True)
            (repo / "bpsync.yaml").write_text(
                "api:\n  version: v2.1\nmanifests: ['tables/*.yaml']\n"
            )
            body = {"type": "mapping", "config": {"name": "Bench hosts", "fields": FIELDS}}
            eid = str(call(url + V21_ENRICHMENTS, "POST", body)["id"])
            call(f"{url}/_emulator/enrichments/{eid}/table", "POST", raw=table_csv(rows))
            time.sleep(1.5)  # let the emulator's rate-limit window forget the setup requests
            log = Path(tmp) / "import.log"
            seconds, rss, code = run_import(repo, url, eid, log)
            text = log.read_text()
            if code != 0:
                print(text[-3000:])
                raise SystemExit(f"bpsync import exited {code}")
            written = (repo / "tables" / "bench.csv").read_bytes()
            if written != table_csv(rows):
                raise SystemExit("the written CSV differs from the emulator's table")
    finally:
        proc.terminate()
        proc.wait()
    sent = REQUEST_LINE.findall(text)
    pages = [path for method, path in sent if method == "GET" and path.endswith("/map")]
    retries = text.count("retrying ")
    floor = len(sent) / CLIENT_PER_SECOND
    over = seconds / floor - 1
    print(
        f"rows: {rows:,}; requests: {len(sent)} ({len(pages)} pages of the read, "
        f"{retries} retries); per_page asked: 1000"
    )
    print(
        f"wall: {seconds:.2f}s; floor (requests / {CLIENT_PER_SECOND:g} per s): "
        f"{floor:.2f}s; over the floor: {over:+.1%} (limit +{MAX_OVER_FLOOR:.0%})"
    )
    print(f"peak RSS: {rss:.1f} MB (limit {MAX_RSS_MB:.0f} MB)")
    ok = over <= MAX_OVER_FLOOR and rss <= MAX_RSS_MB
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    return run(parser.parse_args().rows)


if __name__ == "__main__":
    sys.exit(main())
