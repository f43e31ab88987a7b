"""The contenders and set-up steps of bench_compare.py, each run in a fresh interpreter.

    python benchmarks/compare_tools.py floor-lines FILE...     iterate the lines of the files
    python benchmarks/compare_tools.py floor-sha256 FILE       SHA-256 of a file
    python benchmarks/compare_tools.py polars OLD NEW KEY      keyed diff with polars
    python benchmarks/compare_tools.py shuffle SRC DST [SEED]  SRC's rows in a random order
    python benchmarks/compare_tools.py record ROOT SNAPSHOT    state as if SNAPSHOT was applied

A child process per step keeps the driver small: on Linux a child's peak RSS (`ru_maxrss`)
starts from its parent's high-water mark, so the driver never loads a table itself, and polars
and bpsync are imported only in the children that measure them.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path


def floor_lines(paths: list[str]) -> None:
    """What any diff must do at least: read every line of both files (as bench_plan.py)."""
    for p in paths:
        with open(p, encoding="utf-8", newline="") as f:
            for _ in f:
                pass


def floor_sha256(path: str) -> None:
    with open(path, "rb") as f:
        hashlib.file_digest(f, "sha256")


def polars_diff(old: str, new: str, key: str) -> None:
    """Added and removed keys by anti-joins both ways, changed rows by an inner join on the key
    and an inequality filter on the other columns; every column read as text."""
    import polars as pl

    a = pl.read_csv(old, infer_schema=False)
    b = pl.read_csv(new, infer_schema=False)
    added = b.join(a, on=key, how="anti")
    removed = a.join(b, on=key, how="anti")
    others = [c for c in b.columns if c != key]
    both = b.join(a, on=key, how="inner", suffix="_old")
    changed = both.filter(pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_old"))
                                             for c in others]))  # fmt: skip
    print(json.dumps({"added": added.height, "removed": removed.height,
                      "changed": changed.height}))  # fmt: skip


def shuffle(src: str, dst: str, seed: int) -> None:
    with open(src, encoding="utf-8", newline="") as f:
        header = f.readline()
        lines = f.readlines()
    random.Random(seed).shuffle(lines)
    with open(dst, "w", encoding="utf-8", newline="") as out:
        out.write(header)
        out.writelines(lines)


def record(root: str, snapshot: str) -> None:
    """State as if `snapshot` had been applied to table `bench` (see bench_plan.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_plan import record_applied

    record_applied(Path(root), Path(snapshot))


def main(argv: list[str]) -> int:
    match argv:
        case ["floor-lines", *paths]:
            floor_lines(paths)
        case ["floor-sha256", path]:
            floor_sha256(path)
        case ["polars", old, new, key]:
            polars_diff(old, new, key)
        case ["shuffle", src, dst, *seed]:
            shuffle(src, dst, int(seed[0]) if seed else 3)
        case ["record", root, snapshot]:
            record(root, snapshot)
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
