"""`bpsync fmt`: rewrite tables in canonical form (SPEC §4), atomically.

A compressed table (`csv: table.csv.gz`) stays compressed: fmt looks at the table inside it and,
only when that is not canonical, writes the canonical table gzip-compressed again (no file name,
mtime 0, so the same table always gives the same bytes). Its compression is the user's choice and
is never redone for its own sake.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpsync.errors import Problem
from bpsync.manifest import Manifest
from bpsync.table import ProblemSink, TableInfo, is_gzip_path, write_canonical


@dataclass(frozen=True)
class FmtResult:
    manifest: Manifest
    changed: bool  # the file is (or was) not canonical
    reasons: tuple[str, ...]
    problems: tuple[Problem, ...]


def reasons_of(info: TableInfo) -> tuple[str, ...]:
    out = []
    if info.line_endings_crlf:
        out.append("CRLF line endings")
    if info.missing_final_newline:
        out.append("no final newline")
    if not out and not info.is_canonical:
        out.append("quoting")
    return tuple(out)


def format_table(manifest: Manifest, *, check: bool) -> FmtResult:
    """Canonicalise one table; with `check`, only report. Invalid tables are never written."""
    path = manifest.csv_path.resolve()  # rewrite a symlink's target, not the link
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        sink = ProblemSink(manifest.csv_display)
        with os.fdopen(fd, "wb") as out:
            if is_gzip_path(path):
                with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as packed:
                    info = write_canonical(path, packed, manifest.layout, sink)
            else:
                info = write_canonical(path, out, manifest.layout, sink)
            out.flush()
            os.fsync(out.fileno())
        if not info.ok:
            return FmtResult(manifest, False, (), tuple(sink.finish()))
        changed = not info.is_canonical
        if changed and not check:
            os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)
        return FmtResult(manifest, changed, reasons_of(info), ())
    finally:
        tmp.unlink(missing_ok=True)
