"""Limits checked before reading, absurd sizes, and where bpsync may write (issue 7).

- a CSV over 500 MB (a sparse file) is refused from its size alone, in well under a second;
- a manifest (or bpsync.yaml) over the YAML size cap is refused without being parsed;
- 10,000 columns and 5,000 manifests end in a clear answer in bounded time, never a crash;
- a manifest's csv path that is absolute, climbs out with `..`, or is a symlink (file or
  directory) resolving outside the repository is refused, before any request to BigPanda;
- a full apply changes files only under the state directory `.bpsync/`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import fast_client_options, run_cli

from bpsync.bigpanda import facts
from bpsync.emulator import Emulator
from bpsync.manifest import load_manifest
from bpsync.table import ProblemSink, TableLayout, scan_table
from bpsync.yamlfile import MAX_YAML_BYTES

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-limits-4be1d2"
CONFIG = "manifests: ['tables/**/*.yaml']\n"


def manifest(csv: str, *, map_name: str = "Owners", fields: str | None = None) -> str:
    fields = fields or (
        "  - title: application\n    type: query_tag\n  - title: owner\n    type: result_tag\n"
    )
    return f"map_name: {map_name}\ncsv: {csv}\nfields:\n{fields}"


def make_repo(root: Path, manifests: dict[str, str], tables: dict[str, str]) -> Path:
    (root / "tables").mkdir(parents=True, exist_ok=True)
    (root / "bpsync.yaml").write_text(CONFIG)
    for name, text in manifests.items():
        (root / "tables" / f"{name}.yaml").write_text(text)
    for name, text in tables.items():
        path = root / "tables" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


EMULATOR_OPTIONS = {"job_seconds": 0.02}


def bp(repo: Path, *argv: str, emu: Emulator | None = None) -> tuple[int, str, str]:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN} if emu else {}
    return run_cli(argv, repo, env, client_options=fast_client_options(poll_max=0.05))


# ------------------------------------------------------------------------------- sizes


def test_csv_over_500_mb_is_refused_without_reading(tmp_path: Path, emu: Emulator) -> None:
    repo = make_repo(tmp_path / "repo", {"owners": manifest("owners.csv")}, {})
    big = repo / "tables" / "owners.csv"
    with big.open("wb") as f:
        f.write(b"application,owner\n")
    os.truncate(big, facts.MAX_FILE_BYTES + 1)  # sparse: no 500 MB on disk

    started = time.monotonic()
    sink = ProblemSink("owners.csv")
    info = scan_table(big, TableLayout(("application", "owner"), (0,)), sink)
    assert time.monotonic() - started < 1.0
    assert not info.ok
    assert "500,000,000" in sink.finish()[0].message

    for argv in (["validate"], ["plan", "--no-refresh"]):
        started = time.monotonic()
        code, _out, err = bp(repo, *argv)
        assert time.monotonic() - started < 1.0, argv
        assert code == 1 and "500,000,001 bytes" in err, (argv, err)
    code, _out, err = bp(repo, "apply", "--auto-approve", emu=emu)
    assert code == 1 and "500,000,001 bytes" in err
    assert emu.requests == []  # refused before a single request


@pytest.mark.parametrize("which", ["manifest", "config"])
def test_yaml_over_the_size_cap_is_refused_without_parsing(tmp_path: Path, which: str) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"owners": manifest("owners.csv")},
        {"owners.csv": "application,owner\na,b\n"},
    )
    path = repo / ("tables/owners.yaml" if which == "manifest" else "bpsync.yaml")
    with path.open("a") as f:
        f.write("# padding\n")
    os.truncate(path, MAX_YAML_BYTES + 1)  # NUL bytes: unparseable, so only the cap answers
    started = time.monotonic()
    code, _out, err = bp(repo, "validate")
    assert time.monotonic() - started < 1.0
    assert code == 1
    assert f"{MAX_YAML_BYTES + 1:,} bytes" in err and f"at most {MAX_YAML_BYTES:,}" in err, err
    if which == "manifest":
        m, problems = load_manifest(path, repo)
        assert m is None and len(problems) == 1 and problems[0].path == "tables/owners.yaml"


def test_10000_columns_in_a_manifest(tmp_path: Path) -> None:
    """10,000 fields cannot be valid (the organisation has 200 result tags); bpsync says so
    once, fast, without a traceback."""
    n = 10_000
    fields = "".join(
        f"  - title: c{i}\n    type: {'query_tag' if i == 0 else 'result_tag'}\n" for i in range(n)
    )
    header = ",".join(f"c{i}" for i in range(n))
    row = ",".join(f"v{i}" for i in range(n))
    repo = make_repo(
        tmp_path / "repo",
        {"wide": manifest("wide.csv", fields=fields)},
        {"wide.csv": f"{header}\n{row}\n"},
    )
    started = time.monotonic()
    code, _out, err = bp(repo, "validate")
    elapsed = time.monotonic() - started
    assert code == 1
    assert "9999 distinct result tags; BigPanda allows 200" in err
    assert "Traceback" not in err and "unexpected" not in err
    # ~5 s on an idle machine; the bound catches a quadratic check, not a slow CI runner.
    assert elapsed < 25, f"validate took {elapsed:.1f}s"


def test_199_result_columns_and_a_10000_column_csv(tmp_path: Path) -> None:
    """The widest valid manifest works; a CSV with 10,000 unknown columns gets capped
    problems (one line each, at most 50 + a summary)."""
    fields = "  - title: k\n    type: query_tag\n" + "".join(
        f"  - title: r{i}\n    type: result_tag\n" for i in range(199)
    )
    titles = ["k", *(f"r{i}" for i in range(199))]
    good = ",".join(titles) + "\n" + ",".join(f"v{i}" for i in range(200)) + "\n"
    wide = ",".join(titles + [f"x{i}" for i in range(10_000)]) + "\n" + "a," * 10_199 + "a\n"
    repo = make_repo(
        tmp_path / "repo",
        {"good": manifest("good.csv", map_name="Good", fields=fields)},
        {"good.csv": good},
    )
    started = time.monotonic()
    code, _out, err = bp(repo, "validate")
    assert code == 0, err
    (repo / "tables" / "good.csv").write_text(wide)
    code, _out, err = bp(repo, "validate")
    assert code == 1
    located = [line for line in err.splitlines() if "good.csv:1" in line]
    assert 1 <= len(located) <= 50, len(located)
    assert "more error(s)" in err
    assert time.monotonic() - started < 10


def test_5000_manifests(tmp_path: Path) -> None:
    """5,000 tables (one shared result tag) validate and plan in bounded time."""
    repo = make_repo(tmp_path / "repo", {}, {})
    fields = (
        "  - title: k\n    type: query_tag\n"
        "  - title: v\n    type: result_tag\n    tag_name: owner\n"
    )
    for i in range(5_000):
        (repo / "tables" / f"t{i:04d}.yaml").write_text(
            manifest(f"t{i:04d}.csv", map_name=f"T{i}", fields=fields)
        )
        (repo / "tables" / f"t{i:04d}.csv").write_text(f"k,v\na{i},b\n")
    started = time.monotonic()
    code, out, err = bp(repo, "validate")
    validated = time.monotonic() - started
    assert code == 0, err[-2000:]
    assert "5000 manifest(s), 5000 table(s)" in err
    started = time.monotonic()
    code, out, err = bp(repo, "plan", "--no-refresh")
    planned = time.monotonic() - started
    assert code == 0, err[-2000:]
    assert "Plan: 5,000 tables to change; 5,000 rows to add" in out
    print(f"5,000 manifests: validate {validated:.1f}s, plan {planned:.1f}s")
    # Each takes 5-10 s idle; the bound catches quadratic work, not a loaded machine.
    assert validated < 60 and planned < 60


# ------------------------------------------------------------------------------- paths


OUTSIDE_ROWS = "application,owner\nsecret,data\n"


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink-file", "symlink-dir"])
def test_csv_path_leading_outside_the_repository_is_refused(
    tmp_path: Path, emu: Emulator, kind: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "owners.csv").write_text(OUTSIDE_ROWS)
    repo = make_repo(tmp_path / "repo", {}, {})
    csv = {
        "absolute": str(outside / "owners.csv"),
        "dotdot": "../../outside/owners.csv",
        "symlink-file": "owners.csv",
        "symlink-dir": "data/owners.csv",
    }[kind]
    if kind == "symlink-file":
        (repo / "tables" / "owners.csv").symlink_to(outside / "owners.csv")
    if kind == "symlink-dir":
        (repo / "tables" / "data").symlink_to(outside, target_is_directory=True)
    (repo / "tables" / "owners.yaml").write_text(manifest(csv))

    code, _out, err = bp(repo, "validate")
    assert code == 1
    assert f"tables/owners.yaml:2:6: csv {csv} resolves outside the repository" in err, err
    assert "symlinks leading out" in err  # says what to do
    code, _out, err = bp(repo, "apply", "--auto-approve", emu=emu)
    assert code == 1 and "resolves outside the repository" in err
    assert emu.requests == []  # nothing read from outside reached BigPanda


def test_dotdot_and_symlinks_that_stay_inside_are_accepted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {}, {})
    (repo / "data").mkdir()
    (repo / "data" / "a.csv").write_text(OUTSIDE_ROWS)
    (repo / "tables" / "b.csv").symlink_to(repo / "data" / "a.csv")
    (repo / "tables" / "a.yaml").write_text(manifest("../data/a.csv", map_name="A"))
    (repo / "tables" / "b.yaml").write_text(manifest("b.csv", map_name="B"))
    code, _out, err = bp(repo, "validate")
    assert code == 0, err


# ------------------------------------------------------------------------------- writes


def tree(root: Path) -> dict[str, str]:
    """Every file under root (symlinks as such) with a digest of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[path.relative_to(root).as_posix()] = f"-> {os.readlink(path)}"
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[path.relative_to(root).as_posix()] = digest
    return out


def test_full_apply_writes_only_under_the_state_directory(tmp_path: Path, emu: Emulator) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "tables", repo / "tables")
    shutil.copy(REPO / "bpsync.yaml", repo / "bpsync.yaml")
    # a non-canonical CSV (CRLF) makes apply write a canonical copy to upload
    crlf = repo / "tables" / "service-owners.csv"
    crlf.write_bytes(crlf.read_bytes().replace(b"\n", b"\r\n"))
    before = tree(repo)

    code, out, err = bp(repo, "apply", "--auto-approve", emu=emu)
    assert code == 0, out + err
    m = repo / "tables" / "check-routing.yaml"
    m.write_text(m.read_text().replace("override_existing: true", "override_existing: false"))
    (repo / "tables" / "host-cmdb.yaml").unlink()
    edited = tree(repo)
    code, out, err = bp(repo, "apply", "--auto-approve", emu=emu)  # replace + deactivate
    assert code == 0, out + err
    after = tree(repo)

    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    outside = sorted(p for p in changed if not p.startswith(".bpsync/"))
    assert outside == ["tables/check-routing.yaml", "tables/host-cmdb.yaml"]  # our own edits
    second = {p for p in set(edited) | set(after) if edited.get(p) != after.get(p)}
    assert second and all(p.startswith(".bpsync/") for p in second), sorted(second)
    inside = sorted(p for p in after if p.startswith(".bpsync/"))
    snapshots = [p for p in inside if p.startswith(".bpsync/snapshots/")]
    assert set(inside) - set(snapshots) <= {
        ".bpsync/.gitignore",
        ".bpsync/state.json",
        ".bpsync/state.json.bak",
        ".bpsync/lock.guard",
    }
    assert all(p.endswith(".csv.zst") for p in snapshots) and len(snapshots) == 2
    assert not any(p.endswith(".tmp") for p in after)
