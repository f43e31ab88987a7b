"""Generate synthetic enrichment tables for the benchmarks (never committed).

    python benchmarks/gen_table.py OUT_DIR [--size 500MB] [--seed 1]

writes OUT_DIR/bpsync.yaml, OUT_DIR/tables/bench.yaml, OUT_DIR/tables/bench.csv (about
--size bytes, 5 columns, ~100 bytes a row) and OUT_DIR/bench.mutated.csv: the same table with
1% of rows changed, 0.5% added and 0.5% removed. Other benchmarks import `make_project`.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

HEADER = "host,cmdb_ci,environment,support_group,runbook_url\n"
ENVIRONMENTS = ("production", "staging", "development", "qa", "dr")
GROUPS = ("platform-ops", "payments-sre", "identity", "data-eng", "edge-network", "storage")

MANIFEST = """\
name: bench
map_name: Benchmark hosts
csv: bench.csv
max_delete_fraction: 0.5
fields:
  - title: host
    type: query_tag
  - title: cmdb_ci
    type: result_tag
  - title: environment
    type: result_tag
  - title: support_group
    type: result_tag
  - title: runbook_url
    type: result_tag
"""


def _row(rng: random.Random, i: int) -> str:
    host = f"host-{i:09d}.dc{i % 7}.example.net"
    ci = f"CI{rng.randrange(10**9):09d}"
    env = ENVIRONMENTS[rng.randrange(len(ENVIRONMENTS))]
    group = GROUPS[rng.randrange(len(GROUPS))]
    return f"{host},{ci},{env},{group},https://wiki.example.net/rb/{rng.randrange(10**6):06d}\n"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB)")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[(m.group(2) or "B").upper()]
    return int(float(m.group(1)) * scale)


def write_table(path: Path, size: int, seed: int = 1, max_rows: int | None = None) -> int:
    """Write a table of at most `size` bytes (and `max_rows` rows); return its number of rows."""
    rng = random.Random(seed)
    written = len(HEADER)
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        buf: list[str] = []
        while max_rows is None or rows < max_rows:
            line = _row(rng, rows)
            if written + len(line) > size:
                break
            buf.append(line)
            written += len(line)
            rows += 1
            if len(buf) >= 10_000:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    return rows


def write_mutation(src: Path, dst: Path, seed: int = 2, fraction: float = 0.02) -> None:
    """Copy `src` touching `fraction` of its rows: half of them changed, a quarter removed, and
    new keys added for another quarter (the default 2%: 1% changed, 0.5% removed, 0.5% added)."""
    rng = random.Random(seed)
    removed, changed, new = fraction / 4, fraction * 3 / 4, fraction / 4
    added = 0
    with (
        src.open(encoding="utf-8", newline="") as inp,
        dst.open("w", encoding="utf-8", newline="") as out,
    ):
        out.write(inp.readline())
        for line in inp:
            r = rng.random()
            if r < removed:
                continue
            if r < changed:
                host, rest = line.split(",", 1)
                line = f"{host},CHANGED{rng.randrange(10**6):06d},{rest.split(',', 1)[1]}"
            out.write(line)
            if rng.random() < new:
                added += 1
                out.write(_row(rng, 10**9 - added).replace("host-", "new-host-"))


def make_project(root: Path, size: int, seed: int = 1) -> dict[str, Path]:
    """A complete bpsync project around a generated table; returns the interesting paths."""
    (root / "tables").mkdir(parents=True, exist_ok=True)
    (root / "bpsync.yaml").write_text("manifests: ['tables/*.yaml']\n", encoding="utf-8")
    (root / "tables" / "bench.yaml").write_text(MANIFEST, encoding="utf-8")
    table = root / "tables" / "bench.csv"
    # 1% below `size`: the mutated copy grows a little and must stay under BigPanda's
    # 500 MB limit too, or the default benchmark would measure a refusal.
    write_table(table, size * 99 // 100, seed)
    mutated = root / "bench.mutated.csv"
    write_mutation(table, mutated, seed + 1)
    return {"root": root, "table": table, "mutated": mutated}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size", type=parse_size, default=parse_size("500MB"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    paths = make_project(args.out_dir, args.size, args.seed)
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
