"""`bpsync plan --format json` on a generated table against a snapshot of its mutated copy.

    python benchmarks/bench_plan.py [--size 500MB] [--runs 3]

Changed case: the table differs from the applied snapshot in ~2% of rows (1% changed, 0.5%
added, 0.5% removed). Floor: Python iterating the lines of both files. Unchanged case: the
table equals the snapshot; floor: SHA-256 of the file.
Required (issue 3): changed <= 6x its floor and peak RSS <= 800 MB; unchanged <= 1.5x.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_table import make_project, parse_size
from measure import BPSYNC, run_measured, timed, verdict

from bpsync.config import load_config
from bpsync.manifest import load_manifests
from bpsync.state import LocalBackend, TableState
from bpsync.table import sha256_file


def record_applied(root: Path, snapshot: Path) -> None:
    """State as if `snapshot` had been applied to table `bench`."""
    config = load_config(root, {})
    (manifest,), _ = load_manifests(config)
    backend = LocalBackend(config.state_dir)
    sha = sha256_file(snapshot)
    backend.put_snapshot(sha, snapshot)
    rows = sum(1 for _ in snapshot.open("rb")) - 1
    state = backend.read()
    backend.write(state.with_table(TableState(
        "bench", "e-bench", "v1", manifest.schema(), remote_version=1, sha256=sha, rows=rows,
        applied_at="2026-01-01T00:00:00Z")))


def iterate_lines(*paths: Path) -> None:
    for p in paths:
        with p.open(encoding="utf-8", newline="") as f:
            for _ in f:
                pass


def sha256(path: Path) -> None:
    with path.open("rb") as f:
        hashlib.file_digest(f, "sha256")


def measure(root: Path, runs: int, floor_fn: object) -> tuple[float, float, float]:
    floors, times, rss = [], [], []
    for _ in range(runs):
        floors.append(timed(floor_fn))  # type: ignore[arg-type]
        seconds, peak, code = run_measured(
            [*BPSYNC, "plan", "--format", "json", "--no-refresh"], root)
        if code != 0:
            raise SystemExit(f"bpsync plan failed with exit code {code}")
        times.append(seconds)
        rss.append(peak)
    return statistics.median(floors), statistics.median(times), max(rss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=parse_size, default=parse_size("500MB"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-") as tmp:
        root = Path(tmp)
        paths = make_project(root, args.size)
        table, mutated = paths["table"], paths["mutated"]
        mb = table.stat().st_size / 1e6
        record_applied(root, mutated)
        f, t, r = measure(root, args.runs, lambda: iterate_lines(table, mutated))
        print(f"table: {mb:.0f} MB, {args.runs} runs, medians")
        print(f"changed   floor (lines of both files): {f:6.2f} s")
        print(f"changed   bpsync plan --format json:   {t:6.2f} s  peak RSS {r:.0f} MB")
        print(f"          ratio {t / f:.2f} (<= 6: {verdict(t / f <= 6)}); "
              f"RSS (<= 800 MB: {verdict(r <= 800)})")
        (root / ".bpsync").rename(root / "changed.bpsync")
        record_applied(root, table)
        f2, t2, r2 = measure(root, args.runs, lambda: sha256(table))
        print(f"unchanged floor (sha256 of the file):  {f2:6.2f} s")
        print(f"unchanged bpsync plan --format json:   {t2:6.2f} s  peak RSS {r2:.0f} MB")
        print(f"          ratio {t2 / f2:.2f} (<= 1.5: {verdict(t2 / f2 <= 1.5)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
