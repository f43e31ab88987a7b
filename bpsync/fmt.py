"""`bpsync fmt`: rewrite tables in canonical form (SPEC §4), atomically.

A compressed table (`csv: table.csv.gz`) stays compressed: fmt looks at the table inside it and,
only when that is not canonical, writes the canonical table gzip-compressed again (no file name,
mtime 0, so the same table always gives the same bytes). Its compression is the user's choice and
is never redone for its own sake.
"""

from __future__ import annotations

import codecs
import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpsync.errors import Problem
from bpsync.manifest import Manifest
from bpsync.table import BOM, UTF16_BOMS, ProblemSink, TableInfo, is_gzip_path, write_canonical


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


def source_encoding(path: Path, encoding: str | None) -> tuple[str | None, str | None]:
    """The encoding to read `path` with before canonicalising, and why (None: it is read as
    UTF-8 bytes as it is). Excel writes a BOM ("CSV UTF-8"), UTF-16 ("Unicode Text") or the
    Windows code page ("CSV (Comma delimited)", given as `encoding`)."""
    with path.open("rb") as f:
        start = f.read(4)
    if start.startswith(BOM):
        return "utf-8-sig", "byte order mark removed"
    if start[:2] in UTF16_BOMS:
        return "utf-16", "re-encoded from UTF-16 to UTF-8"
    if encoding is not None and codecs.lookup(encoding).name != "utf-8":
        return encoding, f"re-encoded from {encoding} to UTF-8"
    return None, None


def format_table(manifest: Manifest, *, check: bool, encoding: str | None = None) -> FmtResult:
    """Canonicalise one table; with `check`, only report. Invalid tables are never written.

    A BOM or UTF-16 is recognised and converted; other encodings only when `encoding`
    names them (bytes alone cannot tell cp1252 from Latin-1 or from damaged UTF-8)."""
    path = manifest.csv_path.resolve()  # rewrite a symlink's target, not the link
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    decoded: Path | None = None
    try:
        sink = ProblemSink(manifest.csv_display)
        # A .csv.gz is read as the UTF-8 table inside it; re-encoding applies to plain files.
        source, why = (None, None) if is_gzip_path(path) else source_encoding(path, encoding)
        if source is not None:
            decoded = _as_utf8(path, source)
            if decoded is None:
                return FmtResult(manifest, False, (), (_undecodable(manifest, source),))
        with os.fdopen(fd, "wb") as out:
            source_path = decoded or path
            if is_gzip_path(path):
                with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as packed:
                    info = write_canonical(source_path, packed, manifest.layout, sink)
            else:
                info = write_canonical(source_path, out, manifest.layout, sink)
            out.flush()
            os.fsync(out.fileno())
        if not info.ok:
            return FmtResult(manifest, False, (), tuple(sink.finish()))
        changed = not info.is_canonical or why is not None
        if changed and not check:
            os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)
        reasons = ((why,) if why else ()) + reasons_of(info)
        return FmtResult(
            manifest, changed, tuple(r for r in reasons if r != "quoting" or not why), ()
        )
    finally:
        tmp.unlink(missing_ok=True)
        if decoded is not None:
            decoded.unlink(missing_ok=True)


def _as_utf8(path: Path, encoding: str) -> Path | None:
    """`path` re-encoded as UTF-8 into a temporary file, streaming (None: it does not decode).
    Line endings are kept as they are: canonicalising turns CRLF into LF afterwards."""
    fd, name = tempfile.mkstemp(prefix="bpsync-fmt-", suffix=".csv")
    try:
        with (
            path.open("r", encoding=encoding, newline="") as src,
            os.fdopen(fd, "w", encoding="utf-8", newline="") as out,
        ):
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except UnicodeError:
        Path(name).unlink(missing_ok=True)
        return None
    return Path(name)


def _undecodable(manifest: Manifest, encoding: str) -> Problem:
    return Problem(
        manifest.csv_display,
        None,
        None,
        f"the file does not decode as {encoding}",
        "give the encoding it was saved in: `bpsync fmt --encoding cp1252` (Excel's "
        '"CSV (Comma delimited)" on Windows), `--encoding latin-1`, …',
    )
