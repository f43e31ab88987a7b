"""`bpsync plan --format markdown` against `--format json` on the same changed table.

    python benchmarks/bench_render.py [--size 80MB] [--runs 3]

The table (benchmarks/gen_table.py) differs from the applied snapshot in ~2% of rows: 1%
changed (each with a distinct new `cmdb_ci`, the worst case for the bounded transition
counter), 0.5% added, 0.5% removed. The two formats run in turn, `--runs` times each.
Required (issue 15): the Markdown comment, with its column summary, costs no second pass:
its median time is within 10% of the JSON rendering's, and its peak RSS no higher than 10%
over it (the summary's memory is bounded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import record_applied
from gen_table import make_project, parse_size
from measure import BPSYNC, run_measured, verdict


def plan_once(root: Path, fmt: str) -> tuple[float, float]:
    seconds, peak, code = run_measured(
        [*BPSYNC, "plan", "--format", fmt, "--no-refresh"], root)
    if code not in (0, 2):
        raise SystemExit(f"bpsync plan --format {fmt} failed with exit code {code}")
    return seconds, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=parse_size, default=parse_size("80MB"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-") as tmp:
        root = Path(tmp)
        paths = make_project(root, args.size)
        mb = paths["table"].stat().st_size / 1e6
        record_applied(root, paths["mutated"])
        times: dict[str, list[float]] = {"json": [], "markdown": []}
        rss: dict[str, list[float]] = {"json": [], "markdown": []}
        for _ in range(args.runs):
            for fmt in ("json", "markdown"):
                seconds, peak = plan_once(root, fmt)
                times[fmt].append(seconds)
                rss[fmt].append(peak)
        tj, tm = statistics.median(times["json"]), statistics.median(times["markdown"])
        rj, rm = max(rss["json"]), max(rss["markdown"])
        print(f"table: {mb:.0f} MB, ~2% of rows changed, {args.runs} runs each, medians")
        print(f"bpsync plan --format json:     {tj:6.2f} s  peak RSS {rj:.0f} MB")
        print(f"bpsync plan --format markdown: {tm:6.2f} s  peak RSS {rm:.0f} MB")
        print(f"ratio markdown/json {tm / tj:.3f} (<= 1.10: {verdict(tm / tj <= 1.10)}); "
              f"RSS ratio {rm / rj:.3f} (<= 1.10: {verdict(rm / rj <= 1.10)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
