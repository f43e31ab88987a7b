"""`bpsync validate` on a generated table against the floor of `csv.reader` iterating it.

    python benchmarks/bench_validate.py [--size 500MB] [--runs 3]

Required (issue 2): ratio <= 2.5 and peak RSS <= 700 MB.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_table import make_project, parse_size
from measure import BPSYNC, run_measured, timed, verdict


def floor(path: Path) -> None:
    with path.open(encoding="utf-8", newline="") as f:
        for _ in csv.reader(f):
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=parse_size, default=parse_size("500MB"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-") as tmp:
        paths = make_project(Path(tmp), args.size)
        table = paths["table"]
        mb = table.stat().st_size / 1e6
        floors, times, rss = [], [], []
        for _ in range(args.runs):  # interleaved, so load changes hit both alike
            floors.append(timed(lambda: floor(table)))
            seconds, peak, code = run_measured([*BPSYNC, "validate"], Path(tmp))
            if code != 0:
                print(f"bpsync validate failed with exit code {code}")
                return 1
            times.append(seconds)
            rss.append(peak)
    f, t, r = statistics.median(floors), statistics.median(times), max(rss)
    print(f"table: {mb:.0f} MB, {args.runs} runs, medians")
    print(f"floor  csv.reader iterate: {f:6.2f} s  {mb / f:6.1f} MB/s")
    print(f"bpsync validate:           {t:6.2f} s  {mb / t:6.1f} MB/s  peak RSS {r:.0f} MB")
    print(f"ratio {t / f:.2f} (<= 2.5: {verdict(t / f <= 2.5)}); "
          f"peak RSS (<= 700 MB: {verdict(r <= 700)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
