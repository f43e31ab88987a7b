"""Start-up cost of the command line: `bpsync --help` and `import bpsync.cli`.

    python benchmarks/bench_startup.py [--runs 21]

Each command runs in a fresh interpreter N times (subprocess, timed with perf_counter); the
medians are compared with bare interpreter start-up (`python -c pass`). The children's CPU
time (user + system, from getrusage) is shown too: on a busy machine wall time swings with
the load, CPU time much less.
Required (issue 11): `bpsync --help` at most 150 ms above interpreter start-up.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_MS = 150.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_ms(argv: list[str], runs: int) -> tuple[float, float]:
    """The median wall and CPU time (ms) of `argv` over `runs` runs, after a warm-up run."""
    subprocess.run(argv, check=True, capture_output=True)
    wall, cpu = [], []
    for _ in range(runs):
        cpu_before, started = _children_cpu(), time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((_children_cpu() - cpu_before) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def bpsync_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m bpsync`."""
    script = Path(sys.executable).parent / "bpsync"
    found = str(script) if script.exists() else shutil.which("bpsync")
    return [found] if found else [sys.executable, "-m", "bpsync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="runs per command (default 21)")
    args = parser.parse_args()

    bare, bare_cpu = median_ms([sys.executable, "-c", "pass"], args.runs)
    cases = {
        "bpsync --help": [*bpsync_command(), "--help"],
        "python -c 'import bpsync.cli'": [sys.executable, "-c", "import bpsync.cli"],
    }
    print(f"python -c pass: median {bare:.1f} ms (CPU {bare_cpu:.1f} ms) over {args.runs} runs")
    ok = True
    for name, argv in cases.items():
        ms, cpu = median_ms(argv, args.runs)
        print(
            f"{name}: median {ms:.1f} ms, {ms - bare:+.1f} ms above interpreter start-up "
            f"(CPU {cpu:.1f} ms, {cpu - bare_cpu:+.1f} ms)"
        )
        if name == "bpsync --help":
            ok = ms - bare <= TARGET_MS
    print(
        f"target: bpsync --help <= {TARGET_MS:.0f} ms above start-up: {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
