"""Fuzzing the two readers of untrusted input (issue 7): the CSV scanner
(`bpsync.table.scan_table`) and the YAML loader (`bpsync.yamlfile.load_yaml` + `check_schema`,
`bpsync.manifest.load_manifest`).

Every input, arbitrary bytes or a structure-aware mutation of a valid file (inserted, deleted
and duplicated bytes; quotes, commas, CR, LF, NUL, BOM, invalid UTF-8, very long lines), must
end in success or in problems that each name the file (and, for CSV content errors, a line in
the file) — never an exception, never a hang (a per-example deadline plus a SIGALRM guard),
never memory that grows without bound (ru_maxrss before/after; tracemalloc on the big cases).

Each fuzz test counts the examples it ran and records them as the `fuzz_cases` property
(`pytest --junitxml` shows them; `-rP` prints them).
"""

from __future__ import annotations

import csv
import hashlib
import io
import resource
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync.errors import Problem
from bpsync.manifest import load_manifest
from bpsync.table import ProblemSink, TableLayout, scan_table, write_canonical
from bpsync.yamlfile import MAX_NODES, check_schema, load_yaml

LAYOUT = TableLayout(("application", "owner", "team"), (0,))
HEADER = b"application,owner,team\n"
MANIFEST = b"""\
name: owners
map_name: Service owners
description: Owners per application
active: true
csv: owners.csv
max_delete_fraction: 0.5
fields:
  - title: application
    type: query_tag
  - title: owner
    type: result_tag
    override_existing: false
  - title: Runbook URL
    type: result_tag
    tag_name: runbook_url
"""
CONFIG = b"""\
api:
  version: v1
  region: us
  token_env: BIGPANDA_TOKEN
manifests: ["tables/**/*.yaml"]
state:
  backend: local
  path: .bpsync
"""

FUZZ = settings(
    database=None,  # no .hypothesis/ directory in the repository
    deadline=timedelta(seconds=10),  # generous: the machine is shared; hangs are the alarm's job
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
ALARM_SECONDS = 30  # a hang is an example that outlives this (the deadline only reports)
MAX_RSS_GROWTH_MB = 300


# ------------------------------------------------------------------------------- guards


class Hang(Exception):
    pass


@contextmanager
def time_budget(seconds: int = ALARM_SECONDS) -> Iterator[None]:
    """Interrupt an example that runs longer than `seconds` (a real hang, not just slow)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"example ran longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_counted(inner: Callable[[], None], count: list[int]) -> int:
    """Run a @given function; fail if memory grew without bound meanwhile."""
    before = max_rss_mb()
    inner()
    grew = max_rss_mb() - before
    assert grew < MAX_RSS_GROWTH_MB, f"peak RSS grew by {grew:.0f} MB while fuzzing"
    return count[0]


# ------------------------------------------------------------------------------- CSV


def csv_text(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return HEADER + buf.getvalue().encode("utf-8")


cell = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=0, max_size=12
)
row = st.lists(cell, min_size=3, max_size=3)
valid_csv = st.lists(row, min_size=1, max_size=12).map(csv_text)

SPECIAL = [
    b'"',
    b",",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xef\xbb\xbf",  # BOM
    b"\xff",
    b"\xc3",  # a lone UTF-8 lead byte
    b"\xed\xa0\x80",  # an encoded surrogate
    b"|",
    b'""',
    b"\t",
    b" ",
    b"x" * 40_000,  # longer than a value may be
    b"a,b,c\n",
    HEADER,
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid file with a few structure-aware mutations."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "replace", "crlf", "cut"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            piece = draw(st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=4)))
            data[at:at] = piece
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "duplicate":
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end] * draw(st.integers(1, 3))
        elif op == "replace" and at < len(data):
            data[at] = draw(st.sampled_from(b'",\r\n\x00|\xff'))
        elif op == "crlf":  # mixed line endings
            data = bytearray(bytes(data).replace(b"\n", b"\r\n", draw(st.integers(1, 3))))
        elif op == "cut":
            data = data[:at]
    return bytes(data)


def check_csv(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    sink = ProblemSink(str(path))
    with time_budget():
        info = scan_table(path, LAYOUT, sink)
    problems = sink.finish()
    lines = data.count(b"\n") + data.count(b"\r") + 2
    for p in problems:
        assert isinstance(p, Problem)
        assert p.path == str(path), p
        assert p.message, p
        if p.severity == "error" and not p.message.startswith("…"):
            assert p.line is not None, f"CSV error without a line: {p}"
            assert 1 <= p.line <= lines, p
        assert p.col is None or p.col >= 1, p
    assert info.ok == (sink.errors == 0)
    if not info.ok or sink.errors:
        assert any(p.severity == "error" for p in problems)
        return
    # A valid table: its canonical form is valid, canonical, holds the same rows, and hashes
    # to what the scan said apply will upload.
    out = io.BytesIO()
    with time_budget():
        written = write_canonical(path, out, LAYOUT)
    canon = out.getvalue()
    assert written.ok
    assert hashlib.sha256(canon).hexdigest() == info.canonical_sha256
    assert canon.endswith(b"\n") and b"\r" not in canon and not canon.startswith(b"\xef\xbb\xbf")
    original = [r for r in csv.reader(io.StringIO(data.decode("utf-8"), newline="")) if r]
    assert list(csv.reader(io.StringIO(canon.decode("utf-8"), newline=""))) == original
    assert info.rows == len(original) - 1
    again = path.with_suffix(".canon.csv")
    again.write_bytes(canon)
    info2 = scan_table(again, LAYOUT, ProblemSink(str(again)))
    assert info2.ok and info2.is_canonical
    assert info2.canonical_sha256 == info.canonical_sha256
    assert info.is_canonical == (canon == data)


def test_fuzz_csv_mutations(tmp_path: Path, record_property: Any) -> None:
    count = [0]
    path = tmp_path / "owners.csv"

    @settings(FUZZ, max_examples=1500)
    @given(data=st.one_of(valid_csv, mutated(valid_csv)))
    def inner(data: bytes) -> None:
        count[0] += 1
        check_csv(path, data)

    n = run_counted(inner, count)
    record_property("fuzz_cases", n)
    print(f"CSV mutations: {n} cases")
    assert n >= 1000


def test_fuzz_csv_arbitrary_bytes(tmp_path: Path, record_property: Any) -> None:
    count = [0]
    path = tmp_path / "owners.csv"
    header_then_bytes = st.binary(max_size=300).map(lambda b: HEADER + b)

    @settings(FUZZ, max_examples=700)
    @given(data=st.one_of(st.binary(max_size=300), header_then_bytes))
    def inner(data: bytes) -> None:
        count[0] += 1
        check_csv(path, data)

    n = run_counted(inner, count)
    record_property("fuzz_cases", n)
    print(f"CSV arbitrary bytes: {n} cases")
    assert n >= 500


@pytest.mark.parametrize(
    "data",
    [
        HEADER + b"a,b,c\r\nd,e,f\ng,h,i\r\n",  # mixed line endings
        HEADER + b"a,b,c\rd,e,f\r",  # CR only
        HEADER + b"a,b\x00,c\n",  # NUL inside a value
        b"\x00" * 100,
        HEADER + b"a,b,c\n\x00\n",
        b"\xef\xbb\xbf" + HEADER + b"a,b,c\n",
        HEADER + b'a,"b\nc",d\n',  # LF inside a quoted value
        HEADER + b'a,"b,c\n',  # unclosed quote to the end
        HEADER + b"a,\xc3\x28,c\n",  # invalid UTF-8
        HEADER + b"a,b,c",  # no final newline
        HEADER + b"\n\n\n",
        HEADER * 3,
    ],
)
def test_csv_edge_cases_end_in_problems_with_lines(tmp_path: Path, data: bytes) -> None:
    check_csv(tmp_path / "owners.csv", data)


def test_100_mb_single_line_csv_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """A 100 MB line is written in 1 MiB pieces (never held whole here) and must be refused
    without the scanner holding it whole either."""
    path = tmp_path / "one-line.csv"
    piece = b"x" * (1 << 20)
    with path.open("wb") as f:
        f.write(HEADER)
        for _ in range(100):
            f.write(piece)
        f.write(b"\n")
    del piece
    sink = ProblemSink(str(path))
    tracemalloc.start()
    try:
        started = time.monotonic()
        with time_budget(30):
            info = scan_table(path, LAYOUT, sink)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not info.ok
    errors = [p for p in sink.finish() if p.severity == "error"]
    assert errors and errors[0].line == 2, errors
    assert peak < 20 * (1 << 20), f"scanner peaked at {peak / 2**20:.0f} MiB"
    assert elapsed < 10


def test_many_short_lines_do_not_grow_memory_with_the_file(tmp_path: Path) -> None:
    """30 MB of valid rows: traced memory stays bounded (the scanner streams)."""
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(HEADER)
        for block in range(60):
            f.write(b"".join(b"app-%d-%d,o,t\n" % (block, i) for i in range(40_000)))
    tracemalloc.start()
    try:
        info = scan_table(path, LAYOUT, ProblemSink(str(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.ok and info.rows == 2_400_000
    # the key-hash dict is the only thing that grows with the rows (by design, ~40 B/row)
    assert peak < 250 * (1 << 20), f"peak {peak / 2**20:.0f} MiB for {path.stat().st_size} B"


# ------------------------------------------------------------------------------- YAML


def check_yaml(root: Path, data: bytes) -> None:
    """load_yaml + check_schema (manifest and config schemas) and load_manifest."""
    path = root / "tables" / "owners.yaml"
    path.write_bytes(data)
    display = "tables/owners.yaml"
    with time_budget():
        doc, problems = load_yaml(path, display)
        if doc is not None:
            problems += check_schema(doc, "manifest", display)
            problems += check_schema(doc, "config", display)
        manifest, more = load_manifest(path, root)
    for p in [*problems, *more]:
        assert isinstance(p, Problem)
        assert p.path == display, p
        assert p.message, p
        assert p.line is None or p.line >= 1, p
        assert p.col is None or p.col >= 1, p
    if manifest is not None:
        assert not any(p.severity == "error" for p in more)
        assert manifest.fields and manifest.csv_path.is_file()
        assert isinstance(manifest.map_name, str)
        assert 0 <= manifest.max_delete_fraction <= 1
    else:
        assert any(p.severity == "error" for p in more), more


def yaml_root(tmp_path: Path) -> Path:
    (tmp_path / "tables").mkdir(exist_ok=True)
    (tmp_path / "tables" / "owners.csv").write_bytes(b"application,owner,Runbook URL\na,b,c\n")
    return tmp_path


YAML_SPECIAL = [
    b":",
    b": ",
    b"- ",
    b"\n  ",
    b"\t",
    b"&a ",
    b"*a",
    b"!!python/object:os.system ",
    b"!!binary ",
    b"!!float ",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"'",
    b"#",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\r",
    b"\r\n",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"? ",
    b"|\n",
    b">-\n",
    b".nan",
    b"~",
    b"<<: *a\n",
    b"x" * 5000,
]

valid_yaml = st.sampled_from([MANIFEST, CONFIG])


@st.composite
def mutated_yaml(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_yaml))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "cut"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            piece = draw(
                st.one_of(st.sampled_from(YAML_SPECIAL), st.binary(min_size=1, max_size=4))
            )
            data[at:at] = piece
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "duplicate":
            end = min(len(data), at + draw(st.integers(1, 80)))
            data[at:at] = data[at:end] * draw(st.integers(1, 3))
        else:
            data = data[:at]
    return bytes(data)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["query_tag", "result_tag", "owners.csv", "application"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def structured_manifest(draw: st.DrawFn) -> bytes:
    """A manifest whose keys hold arbitrary YAML values (types, nesting) instead of text."""
    doc: dict[str, Any] = yaml.safe_load(MANIFEST)
    for key in draw(st.lists(st.sampled_from([*doc, "fields.0", "fields.1", "extra"]), max_size=3)):
        value = draw(json_like)
        if key.startswith("fields."):
            fields = doc.get("fields")
            if isinstance(fields, list) and len(fields) > int(key[-1]):
                fields[int(key[-1])] = value
        else:
            doc[key] = value
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans())).encode("utf-8")


def test_fuzz_yaml_mutations(tmp_path: Path, record_property: Any) -> None:
    count = [0]
    root = yaml_root(tmp_path)

    @settings(FUZZ, max_examples=700)
    @given(data=st.one_of(mutated_yaml(), structured_manifest()))
    def inner(data: bytes) -> None:
        count[0] += 1
        check_yaml(root, data)

    n = run_counted(inner, count)
    record_property("fuzz_cases", n)
    print(f"YAML mutations: {n} cases")
    assert n >= 500


def test_fuzz_yaml_arbitrary_bytes(tmp_path: Path, record_property: Any) -> None:
    count = [0]
    root = yaml_root(tmp_path)

    @settings(FUZZ, max_examples=400)
    @given(data=st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
    def inner(data: bytes) -> None:
        count[0] += 1
        check_yaml(root, data)

    n = run_counted(inner, count)
    record_property("fuzz_cases", n)
    print(f"YAML arbitrary bytes: {n} cases")
    assert n >= 300


def billion_laughs(levels: int = 9) -> bytes:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(billion_laughs(), id="billion-laughs"),
        pytest.param(
            MANIFEST + b"when: " + billion_laughs().replace(b"\n", b"\n  "), id="bomb-in-key"
        ),
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="flow-seq-10000"),
        pytest.param(b"a: " + b"{a: " * 10_000 + b"1" + b"}" * 10_000, id="flow-map-10000"),
        pytest.param(b"- " * 10_000 + b"x\n", id="block-seq-10000-one-line"),
        pytest.param(b"".join(b" " * i + b"- \n" for i in range(1300)), id="block-seq-1300"),
        pytest.param(MANIFEST + b"when: " + b"[" * 450 + b"]" * 450 + b"\n", id="deep-when"),
    ],
)
def test_yaml_bombs_and_deep_nesting_end_in_a_problem(tmp_path: Path, data: bytes) -> None:
    """PyYAML's scanner needs ~1-2 s for 10,000 open brackets (tracemalloc would make that
    5x slower), so memory is checked by peak RSS here."""
    root = yaml_root(tmp_path)
    before = max_rss_mb()
    started = time.monotonic()
    check_yaml(root, data)
    elapsed = time.monotonic() - started
    assert elapsed < ALARM_SECONDS
    assert max_rss_mb() - before < 200, f"peak RSS grew by {max_rss_mb() - before:.0f} MB"
    manifest, problems = load_manifest(root / "tables" / "owners.yaml", root)
    assert manifest is None and problems


def test_alias_expansion_is_capped_just_above_the_limit(tmp_path: Path) -> None:
    root = yaml_root(tmp_path)
    path = root / "tables" / "owners.yaml"
    path.write_bytes(billion_laughs(levels=5))  # 9^6 ≈ 531k nodes
    doc, problems = load_yaml(path, "owners.yaml")
    assert doc is None
    assert f"more than {MAX_NODES:,} YAML nodes" in problems[0].message


def test_max_delete_fraction_nan_is_refused(tmp_path: Path) -> None:
    root = yaml_root(tmp_path)
    path = root / "tables" / "owners.yaml"
    path.write_bytes(MANIFEST.replace(b"max_delete_fraction: 0.5", b"max_delete_fraction: .nan"))
    manifest, problems = load_manifest(path, root)
    assert manifest is None
    assert any("max_delete_fraction" in p.message for p in problems), problems


def test_empty_csv_scans_as_not_ok(tmp_path: Path) -> None:
    path = tmp_path / "owners.csv"
    path.write_bytes(b"")
    sink = ProblemSink(str(path))
    info = scan_table(path, LAYOUT, sink)
    assert sink.errors == 1
    assert not info.ok


def test_cr_only_blank_line_is_not_dropped_silently(tmp_path: Path) -> None:
    path = tmp_path / "owners.csv"
    path.write_bytes(HEADER + b"x,y,z\r\r\na,b,c\n")
    sink = ProblemSink(str(path))
    info = scan_table(path, LAYOUT, sink)
    assert not info.ok
    assert [p.line for p in sink.finish()] == [2]


SCAN_IN_A_BOX = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pathlib import Path
from bpsync.table import ProblemSink, TableLayout, scan_table
sink = ProblemSink("owners.csv")
scan_table(Path(sys.argv[1]), TableLayout(("application", "owner", "team"), (0,)), sink)
print([p.line for p in sink.finish()])
"""


def test_two_malformed_rows_do_not_hang_the_scanner(tmp_path: Path) -> None:
    path = tmp_path / "owners.csv"
    path.write_bytes(HEADER + b'a,b,c\nd,e,f\ng,"h"x,i\nj,"k"y,l\n')
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", SCAN_IN_A_BOX, str(path)],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scan_table did not finish within 5 s (a 5-line file)")
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "[4, 5]"
