"""Small builders shared by the foundation tests: a table repository on disk, and the CLI.

    root = make_repo(tmp_path, manifests={"owners": manifest_yaml("owners.csv", FIELDS)},
                     tables={"owners.csv": "application,owner\\nbilling,ana\\n"})
    code, out, err = run_cli(["validate"], root)

Tables may be given as `str` (written as UTF-8 bytes exactly, no newline translation) or
as `bytes` (written as they are), so tests control every byte of a CSV.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bpsync.cli import run
from bpsync.console import Console

DEFAULT_CONFIG = "manifests: ['tables/*.yaml']\n"

# (title, type, tag_name or None)
FieldSpec = tuple[str, str, str | None]

OWNERS_FIELDS: tuple[FieldSpec, ...] = (
    ("application", "query_tag", None),
    ("owner", "result_tag", None),
    ("team", "result_tag", None),
)
OWNERS_HEADER = "application,owner,team\n"


def manifest_yaml(
    csv: str,
    fields: Sequence[FieldSpec] = OWNERS_FIELDS,
    *,
    name: str | None = None,
    map_name: str = "Owners",
    extra: str = "",
) -> str:
    """The text of a valid manifest (plus `extra` lines appended at top level)."""
    lines = []
    if name is not None:
        lines.append(f"name: {name}")
    lines += [f"map_name: {map_name}", f"csv: {csv}", "fields:"]
    for title, kind, tag in fields:
        lines.append(f"  - title: {title}")
        lines.append(f"    type: {kind}")
        if tag is not None:
            lines.append(f"    tag_name: {tag}")
    return "\n".join(lines) + "\n" + extra


def make_repo(
    tmp_path: Path,
    manifests: Mapping[str, str] | None = None,
    tables: Mapping[str, str | bytes] | None = None,
    config: str | None = DEFAULT_CONFIG,
) -> Path:
    """A table repository under `tmp_path/repo`.

    `manifests` maps a stem to YAML text (written to tables/<stem>.yaml); `tables` maps a file
    name to its content (written to tables/<name>); `config` is bpsync.yaml (None: no file).
    """
    root = tmp_path / "repo"
    (root / "tables").mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "bpsync.yaml").write_bytes(config.encode("utf-8"))
    for stem, text in (manifests or {}).items():
        (root / "tables" / f"{stem}.yaml").write_bytes(text.encode("utf-8"))
    for name, content in (tables or {}).items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (root / "tables" / name).write_bytes(data)
    return root


def owners_repo(
    tmp_path: Path,
    csv: str | bytes,
    *,
    fields: Sequence[FieldSpec] = OWNERS_FIELDS,
    header: str | None = None,
) -> Path:
    """A repository holding one manifest `owners` whose CSV is `csv` (tables/owners.csv).

    With `header`, the CSV is that header line followed by `csv`.
    """
    if header is not None:
        csv = header + csv if isinstance(csv, str) else header.encode() + csv
    return make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv", fields)},
        tables={"owners.csv": csv},
    )


def fast_client_options(**extra: Any) -> dict[str, Any]:
    """BigPandaClient options for tests: real clock, tiny poll and backoff steps, no rate
    limit worth the name, so the suite stays fast."""
    from bpsync.bigpanda.client import RateLimiter

    return {
        "poll_initial": 0.02,
        "poll_max": 0.1,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "rate_limiter": RateLimiter(1000),
        **extra,
    }


def run_cli(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    *,
    tty: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> tuple[int, str, str]:
    """Run bpsync in-process (no token and no TTY unless given); returns (exit code, stdout,
    stderr). `client_options` go to the BigPanda client (e.g. `fast_client_options()`)."""
    out, err = io.StringIO(), io.StringIO()
    code = run(
        list(argv),
        env=dict(env or {}),
        cwd=cwd,
        console=Console(out=out, err=err),
        stdin_isatty=tty,
        client_options=client_options,
    )
    return code, out.getvalue(), err.getvalue()


def problem_lines(err: str, location: str) -> list[str]:
    """The lines of `err` reporting a problem at exactly `location` (e.g. `t.csv:4:2`), also
    when the path is printed absolute (`/…/location`)."""
    return [
        line
        for line in err.splitlines()
        if f" {location}: " in f" {line}" or f"/{location}: " in line
    ]


def one_problem(err: str, location: str, *words: str) -> str:
    """The single problem line at `location`; fails listing `err` when absent or ambiguous,
    or when it lacks one of `words`."""
    found = problem_lines(err, location)
    assert len(found) == 1, f"expected one problem at {location}, got {found!r} in:\n{err}"
    for word in words:
        assert word in found[0], f"{word!r} missing from {found[0]!r}"
    return found[0]


def mutate_rows(rows: list[str], rnd: random.Random, fraction: float) -> list[str]:
    """`fraction` of the rows touched where they stand: changed, removed, or a row added."""
    out: list[str] = []
    for i, row in enumerate(rows):
        r = rnd.random()
        if r < fraction / 2:
            out.append(row + "x")  # changed (the last cell)
        elif r < fraction * 3 / 4:
            continue  # removed
        elif r < fraction:
            out += [row, f"new{i:06d},a,b"]  # added after it
        else:
            out.append(row)
    return out


def diffs_every_way(
    snap: Path,
    path: Path,
    layout: Any,
    file_digest: Callable[[], str] | None = None,
    sorted_arrays: Iterable[bool] = (False, True),
) -> list[tuple[Any, list[str]]]:
    """(diff, problems) of `path` against the snapshot file `snap` by the byte path, the
    line aligner and hashing, in that order. Hashing runs with a set and with sorted arrays
    (as for a snapshot of millions of rows), which must agree."""
    from bpsync import rowdiff
    from bpsync.table import ProblemSink

    def diff(trusted: bool, limit: int) -> tuple[Any, list[str]]:
        sink = ProblemSink("t.csv")
        d = rowdiff.diff_table(
            path,
            layout,
            sink,
            lambda: snap.open("rb"),
            align_limit=limit,
            trusted=trusted,
            file_digest=file_digest,
        )
        return d, [str(p) for p in sink.finish()]

    out = [diff(True, 1_000_000), diff(False, 1_000_000)]
    hashed = []
    for arrays in sorted_arrays:
        with sorted_matching() if arrays else nullcontext():
            hashed.append(diff(False, 0))  # 0: alignment gives up at once
    assert all(h == hashed[0] for h in hashed), "sorted arrays and a set hash differently"
    return [*out, hashed[0]]


@contextmanager
def sorted_matching() -> Iterator[None]:
    """The hashed diff matching sorted arrays, as it does for a snapshot of millions of rows
    (small tables use a set): for checking both ways give the same diff."""
    from bpsync import rowdiff

    real = rowdiff._SORTED_MATCH_ROWS
    rowdiff._SORTED_MATCH_ROWS = 0
    try:
        yield
    finally:
        rowdiff._SORTED_MATCH_ROWS = real
