"""Where `bpsync plan --format json` (and a first `apply`) spend their time, per phase.

    python benchmarks/profile_plan.py [--size 100MB] [--cases inorder,shuffled,new,apply,imports]
                                      [--out FILE.md] [--keep DIR]

Builds the cases of bench_compare.py (generated tables in a temp dir, deleted afterwards), runs
each command once without a profiler (its wall time) and once under cProfile, with every thread
profiled on its own (the snapshot's reader and the digest run on background threads; apply's
tables on a pool's worker threads). Each function's own time goes to a phase: bpsync functions
by the rules in PHASES, any other function (built-ins, the standard library) to the phases of
its callers, in proportion to the time it spent under each (pstats keeps one level of callers,
so a helper shared by two phases splits by its own totals). A phase's share of the profiled
time, times the unprofiled wall time, estimates its seconds (cProfile slows Python-heavy code
more than C-heavy code, so read the estimates as ±20%). `imports` runs
`python -X importtime -c 'import bpsync.cli'`. `--keep DIR` keeps the .prof files for pstats.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

Func = tuple[str, int, str]

KEYS = "key hashes, duplicate-key check"
SNAPSHOT = "snapshot: read, gunzip, verify SHA-256"
SNAP_MAIN = "snapshot: wait for its reader, decode, split lines"
# (file pattern, function-name pattern, phase), first match wins; see attribute().
PHASES: list[tuple[str, str, str]] = [
    (r"^<frozen importlib", r".", "start-up: imports"),
    (r".", r"^<module>$", "start-up: imports"),
    (r"^~$", r"^<built-in method time\.sleep>$", "waiting (sleep: polling the job)"),
    (r"bpsync/render/", r".", "rendering (JSON, text), sorting rows"),
    (r"bpsync/table\.py$", r"^(_keys|_key_values|report_duplicates|key_hash)$", KEYS),
    (r"bpsync/rowdiff\.py$", r"^(_has_duplicate_keys|_keys_of)$", KEYS),
    (r"bpsync/table\.py$", r"^(prefetched|split_blocks)$", SNAP_MAIN),
    (r"bpsync/rowdiff\.py$", r"^_iter_snapshot$", SNAP_MAIN),
    (r"bpsync/table\.py$", r"^(sha256_file|get|request)$", "SHA-256 of the file"),
    (r"bpsync/table\.py$", r"^(write_canonical|emit)$", "canonical copy (apply)"),
    (r"bpsync/table\.py$", r".", "scan, validate the new table"),
    (r"bpsync/keycount\.py$", r".", KEYS),
    (r"bpsync/(rowdiff|bytealign)\.py$", r".", "diff: align / hash, classify"),
    (r"bpsync/planner\.py$", r"^(_iter_rows|collect)$", "row changes of an all-add table"),
    (r"bpsync/planner\.py$", r".", "plan assembly"),
    (r"bpsync/plan\.py$", r".", "plan assembly"),
    (r"bpsync/state/local\.py$", r"^(readinto|read|open_snapshot)$", SNAPSHOT),
    (r"bpsync/state/", r".", "state, snapshot store"),
    (r"bpsync/bigpanda/|/httpx/|/httpcore/|/h11/", r".", "HTTP (client, upload, polls)"),
    (r"bpsync/applier\.py$", r".", "apply orchestration"),
    (r"bpsync/commands\.py$", r"^(write|drain)$", "writing stdout (the batching writer)"),
    (r"bpsync/", r".", "CLI, config, manifests"),
]


# Prepended for background threads (the snapshot's reader, the file digest): there, a lock
# wait is a full queue, i.e. the main thread being slower.
BACKGROUND_PHASES: list[tuple[str, str, str]] = [
    (r"^~$", r"^<method 'acquire' of '_thread\.lock' objects>$", "idle (queue full)"),
    (r"bpsync/table\.py$", r"^work$", SNAPSHOT),
    (r"bpsync/state/", r".", SNAPSHOT),
]


def rule(func: Func, background: bool = False) -> str | None:
    file, _, name = func
    for fpat, npat, phase in (BACKGROUND_PHASES + PHASES) if background else PHASES:
        if re.search(fpat, file) and re.search(npat, name):
            return phase
    return None


def attribute(stats: dict[Func, Any], background: bool = False) -> dict[str, float]:
    """Seconds of own time per phase; functions without a rule inherit their callers'."""
    memo: dict[Func, dict[str, float]] = {}
    visiting: set[Func] = set()

    def shares(f: Func) -> dict[str, float]:
        if f in memo:
            return memo[f]
        if (phase := rule(f, background)) is not None:
            memo[f] = {phase: 1.0}
            return memo[f]
        visiting.add(f)
        # A recursive function's calls from itself are skipped: its time follows the
        # callers that entered the recursion.
        callers = stats[f][4] if f in stats else {}
        # Weighted by the time spent under each caller (cumulative over that edge): what is
        # passed up is mostly the time of callees, e.g. a lock wait under threading's wait.
        weights = {c: e[3] or e[2] for c, e in callers.items() if c not in visiting}
        total = sum(weights.values())
        acc: dict[str, float] = defaultdict(float)
        for c, w in weights.items():
            for phase, s in shares(c).items():
                acc[phase] += s * w / total
        visiting.discard(f)
        memo[f] = dict(acc) if total > 0 else {"other": 1.0}
        return memo[f]

    seconds: dict[str, float] = defaultdict(float)
    for f, (_, _, tt, _, _) in stats.items():
        for phase, s in shares(f).items():
            seconds[phase] += tt * s
    return dict(seconds)


# -- the profiled child -----------------------------------------------------------------------


def child(prefix: str, argv: list[str]) -> int:
    """Run `python -m bpsync ARGV` with every thread profiled; dump PREFIX.<thread>.prof."""
    done: list[tuple[str, cProfile.Profile]] = []
    original = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()
            done.append((self.name, prof))

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    sys.argv = ["bpsync", *argv]
    main = cProfile.Profile()
    code: Any = 0
    main.enable()
    try:
        runpy.run_module("bpsync", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        main.disable()
    main.dump_stats(f"{prefix}.MainThread.prof")
    for i, (name, prof) in enumerate(list(done)):
        prof.dump_stats(f"{prefix}.{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.{i}.prof")
    return int(code or 0)


# -- the driver -------------------------------------------------------------------------------


def profile_case(bench: Any, name: str, cmd: list[str], cwd: Path, env: dict[str, str] | None,
                 keep: Path) -> str:  # fmt: skip
    from bench_compare import Tool, run_child

    wall, rss = run_child(Tool(f"{name} unprofiled", cmd, cwd, env), bench.logs)
    prefix = keep / name
    pcmd = [sys.executable, str(Path(__file__).resolve()), "_child", str(prefix), "--", *cmd[3:]]
    began = time.perf_counter()
    run_child(Tool(f"{name} profiled", pcmd, cwd, env), bench.logs)
    profiled = time.perf_counter() - began
    what = " ".join(["bpsync", *cmd[3:]])
    return summarise(name, what, keep, wall, rss, profiled)


def summarise(name: str, what: str, keep: Path, wall: float, rss: float, profiled: float) -> str:
    meta = {"name": name, "what": what, "wall": wall, "rss": rss, "profiled": profiled}
    (keep / f"{name}.json").write_text(json.dumps(meta), encoding="utf-8")
    out = [f"#### {name}: `{what}` — {wall:.2f} s unprofiled ({rss:.0f} MB), "
           f"{profiled:.2f} s profiled", ""]  # fmt: skip
    files = sorted(keep.glob(f"{name}.*.prof"), key=lambda p: "" if ".MainThread." in p.name
                   else p.name)  # fmt: skip
    threads: dict[str, pstats.Stats] = {}
    for f in files:
        label = f.name[len(name) + 1 : -len(".prof")]
        label = re.sub(r"\.\d+$", "", label)
        label = re.sub(r"_\d+$", "", label)  # pool workers: one entry for all
        st = pstats.Stats(str(f))
        if label in threads:
            threads[label].add(st)
        else:
            threads[label] = st
    main_total = _total(threads["MainThread"])
    out += ["| thread | profiled own time |", "|---|---|"]
    out += [f"| {t} | {_total(s):.2f} s |" for t, s in threads.items()]
    out.append("")
    for label, st in threads.items():
        total = _total(st)
        if label != "MainThread" and total < 0.2 * main_total:
            continue
        phases = attribute(st.stats, label != "MainThread")  # type: ignore[attr-defined]
        scale = wall / main_total  # the main thread runs for the whole wall time
        out += [f"phases of {label}:", "", "| phase | profiled | share | ≈ unprofiled |",
                "|---|---|---|---|"]  # fmt: skip
        for phase, s in sorted(phases.items(), key=lambda kv: -kv[1]):
            if s / total >= 0.005:
                out.append(f"| {phase} | {s:.2f} s | {s / total:.0%} | {s * scale:.2f} s |")
        out += ["", f"top functions of {label} by own time (incl. built-ins they call is "
                "not included):", "", "| own | cumulative | calls | function |",
                "|---|---|---|---|"]  # fmt: skip
        out += _top(st, "tt", 12)
        out += ["", f"bpsync functions of {label} by cumulative time:", "",
                "| own | cumulative | calls | function |", "|---|---|---|---|"]  # fmt: skip
        out += _top(st, "ct", 14, only="bpsync/")
        out.append("")
    return "\n".join(out)


def _total(st: pstats.Stats) -> float:
    return float(sum(v[2] for v in st.stats.values()))  # type: ignore[attr-defined]


def _where(f: Func) -> str:
    file, line, fname = f
    m = re.search(r"(bpsync/.*|site-packages/.*|lib/python3\.\d+/.*)$", file)
    short = m.group(1) if m else file
    short = re.sub(r"^(site-packages|lib/python3\.\d+)/", "", short)
    return f"`{fname}` {short}:{line}" if file != "~" else f"`{fname}`"


def _top(st: pstats.Stats, key: str, n: int, only: str | None = None) -> list[str]:
    rows = [(f, v) for f, v in st.stats.items()  # type: ignore[attr-defined]
            if only is None or only in f[0]]  # fmt: skip
    rows.sort(key=lambda fv: -fv[1][2 if key == "tt" else 3])
    return [f"| {v[2]:.2f} s | {v[3]:.2f} s | {v[1]:,} | {_where(f)} |" for f, v in rows[:n]]


def imports_md(runs: int = 5) -> str:
    py = sys.executable
    wall = {}
    for label, code in (("python -c pass", "pass"), ("import bpsync.cli", "import bpsync.cli")):
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            subprocess.run([py, "-c", code], check=True)
            times.append(time.perf_counter() - began)
        wall[label] = sorted(times)[runs // 2]
    err = subprocess.run([py, "-X", "importtime", "-c", "import bpsync.cli"], check=True,
                         capture_output=True, text=True).stderr  # fmt: skip
    # importtime prints a module after what it imported, two spaces deeper per level: the
    # direct imports of bpsync.cli are the lines one level deeper just before it.
    parsed = []
    for line in err.splitlines():
        if m := re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line):
            parsed.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    at = next(i for i, (_, _, mod) in enumerate(parsed) if mod == "bpsync.cli")
    total, depth, _ = parsed[at]
    tops: list[tuple[int, str]] = []
    for cumulative, d, mod in reversed(parsed[:at]):
        if d <= depth:
            break
        if d == depth + 2:
            tops.append((cumulative, mod))
    tops.sort(reverse=True)
    out = ["#### start-up: `python -X importtime -c 'import bpsync.cli'`", "",
           f"wall, median of {runs}: `python -c pass` {wall['python -c pass'] * 1000:.0f} ms, "
           f"`python -c 'import bpsync.cli'` {wall['import bpsync.cli'] * 1000:.0f} ms; "
           f"importtime total for bpsync.cli {total / 1000:.0f} ms (importtime inflates it).",
           "", "| imported by bpsync.cli | cumulative |", "|---|---|"]  # fmt: skip
    out += [f"| {mod} | {us / 1000:.1f} ms |" for us, mod in tops[:15]]
    return "\n".join(out) + "\n"


def main() -> int:
    from bench_compare import PY, TOKEN, Bench, Emulator, project
    from gen_table import parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("100MB"))
    ap.add_argument("--cases", default="inorder,shuffled,new,apply,imports",
                    help="also changed-F: F of the rows touched, e.g. changed-0.1")  # fmt: skip
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the .prof files here")
    ap.add_argument("--resummarise", type=Path, metavar="DIR",
                    help="only summarise again the profiles kept in DIR")  # fmt: skip
    args = ap.parse_args()
    if args.resummarise:
        for meta in sorted(args.resummarise.glob("*.json")):
            m = json.loads(meta.read_text(encoding="utf-8"))
            print(summarise(m["name"], m["what"], args.resummarise, m["wall"], m["rss"],
                            m["profiled"]))  # fmt: skip
        return 0
    plan = [PY, "-m", "bpsync", "plan", "--format", "json", "--no-refresh"]
    report = [f"size {args.size / 1e6:.0f} MB, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
              f", load average {os.getloadavg()[0]:.1f}", ""]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bpsync-profile-") as tmp:
        bench = Bench(Path(tmp), args.size, 1, None)
        keep = args.keep or Path(tmp) / "prof"
        keep.mkdir(parents=True, exist_ok=True)
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            print(f"== {case}", flush=True)
            if case == "imports":
                text = imports_md()
            elif case in ("inorder", "shuffled"):
                new = bench.file("table" if case == "inorder" else "shuffled")
                root = project(Path(tmp) / case, new, bench.file("mutated"))
                text = profile_case(bench, case, plan, root, None, keep)
            elif case.startswith("changed-"):  # e.g. changed-0.1: 10% of rows touched
                old = bench.file(f"mutated-{float(case.split('-')[1])}")
                root = project(Path(tmp) / case, bench.file("table"), old)
                text = profile_case(bench, case, plan, root, None, keep)
            elif case == "new":
                root = project(Path(tmp) / case, bench.file("table"), None)
                text = profile_case(bench, case, plan, root, None, keep)
            elif case == "apply":
                root = project(Path(tmp) / case, bench.file("table"), None)
                cmd = [PY, "-m", "bpsync", "apply", "--auto-approve"]
                with Emulator(Path(tmp) / "emulator-1") as emu:
                    env = {**os.environ, "BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
                    from bench_compare import Tool, run_child

                    wall, rss = run_child(Tool("apply unprofiled", cmd, root, env), bench.logs)
                with Emulator(Path(tmp) / "emulator-2") as emu:
                    env = {**os.environ, "BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
                    shutil.rmtree(root / ".bpsync")
                    pcmd = [PY, str(Path(__file__).resolve()), "_child", str(keep / "apply"),
                            "--", *cmd[3:]]  # fmt: skip
                    began = time.perf_counter()
                    run_child(Tool("apply profiled", pcmd, root, env), bench.logs)
                    profiled = time.perf_counter() - began
                text = summarise("apply", "bpsync apply --auto-approve", keep, wall, rss,
                                 profiled)  # fmt: skip
            else:
                ap.error(f"unknown case {case}")
            print(text, flush=True)
            report.append(text)
    if args.out:
        args.out.write_text("\n".join(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        sys.exit(child(sys.argv[2], sys.argv[4:]))
    sys.exit(main())
