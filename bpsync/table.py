"""Streaming CSV reader that enforces BigPanda's table rules, and the canonical writer.

Tables reach 500 MB (about 5 million rows), so the reader works on 1 MiB blocks of bytes
rather than row by row. Most blocks hold no quote, CR, pipe or long line; for those every
check is a C-level operation over the whole block (comma count, key hashes fed to a dict,
max line length) and the block's bytes already are the canonical form. Only blocks that
hold something unusual are parsed with `csv.reader`, row by row. This keeps `validate`
within ~2x of merely iterating `csv.reader` over the file (see benchmarks/RESULTS.md).

Duplicate keys are found through a dict of 64-bit key hashes (a dict is ~40% smaller than
a set at this size); a hash seen twice triggers a second, exact pass over the file for
just those hashes, so a collision can never produce a false error.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import operator
import queue
import threading
import zlib
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, cast

from bpsync.bigpanda import facts
from bpsync.errors import Problem

BLOCK_SIZE = 1 << 20
BOM = b"\xef\xbb\xbf"
# What git leaves in place of a table kept in Git LFS when the objects were not fetched.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SUFFIX = ".gz"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# A value longer than this many characters may exceed MAX_VALUE_BYTES once UTF-8 encoded
# (4 bytes per character at most); shorter lines need no per-value check.
_SAFE_LINE_CHARS = facts.MAX_VALUE_BYTES // 4
DEFAULT_PROBLEM_CAP = 50
# The longest line a valid table can hold is far shorter: 32 KiB values, quoted, in a few
# hundred columns at most. Past this, the file has no usable line breaks (CR-only endings).
MAX_LINE_BYTES = 64 * 1024 * 1024

# What a scan delivers: (line number of the first row, canonical lines), one line per row.
RowBlock = tuple[int, list[str]]
# How a scan checks keys: "check" keeps a dict of key hashes and reports duplicates; "log"
# keeps every key's hash in file order (`TableScan.key_log`) for callers that settle
# duplicates themselves (the aligned row diff); "off" does neither (flat memory).
KeyMode = Literal["check", "log", "off"]
# A block's lines split into runs that equal the baseline's (True: already validated, never
# parsed again) and runs to be checked and passed on (False). See `TableScan(known=...)`.
KnownSplitter = Callable[[bytes], list[tuple[bool, bytes, int]]]


@dataclass(frozen=True)
class TableLayout:
    """What a table must look like: its column titles and which of them form the key."""

    titles: tuple[str, ...]
    key_indexes: tuple[int, ...]

    @property
    def header_line(self) -> str:
        return format_row(self.titles)

    @property
    def key_titles(self) -> tuple[str, ...]:
        return tuple(self.titles[i] for i in self.key_indexes)

    def key_of(self, row: Sequence[str]) -> tuple[str, ...]:
        return tuple(row[i] for i in self.key_indexes)


@dataclass
class ProblemSink:
    """Collects problems of one file, keeping at most `cap` errors and counting the rest."""

    path: str
    cap: int = DEFAULT_PROBLEM_CAP
    problems: list[Problem] = field(default_factory=list)
    errors: int = 0
    warnings: int = 0
    suppressed_errors: int = 0
    suppressed_warnings: int = 0

    def error(self, line: int | None, message: str, hint: str = "", col: int | None = None) -> None:
        self.errors += 1
        if self.errors > self.cap:
            self.suppressed_errors += 1
            return
        self.problems.append(Problem(self.path, line, col, message, hint))

    def warning(
        self, line: int | None, message: str, hint: str = "", col: int | None = None
    ) -> None:
        self.warnings += 1
        if self.warnings > 10:
            self.suppressed_warnings += 1
            return
        self.problems.append(Problem(self.path, line, col, message, hint, "warning"))

    def finish(self) -> list[Problem]:
        """The problems, with a closing line for what the cap left out."""
        out = list(self.problems)
        if self.suppressed_errors:
            out.append(
                Problem(
                    self.path,
                    None,
                    None,
                    f"… and {self.suppressed_errors} more error(s)",
                    "fix the ones above and run `bpsync validate` again",
                )
            )
        if self.suppressed_warnings:
            out.append(
                Problem(
                    self.path,
                    None,
                    None,
                    f"… and {self.suppressed_warnings} more warning(s) of this kind",
                    severity="warning",
                )
            )
        return out


@dataclass(frozen=True)
class TableInfo:
    """What a scan learned about a table file."""

    rows: int
    canonical_sha256: str  # hex digest of the canonical form (what apply uploads)
    is_canonical: bool  # the file's bytes (decompressed, for a .gz) already are the canonical form
    # `size` is of the table itself: decompressed, for a .gz (what the 500 MB limit is about).
    size: int
    ok: bool  # no errors were found
    line_endings_crlf: bool
    missing_final_newline: bool
    columns: tuple[str, ...] = ()  # the header row as read; empty when none could be read


_first = itemgetter(0)


def key_hash(key: tuple[str, ...]) -> int:
    """The hash the scanner keeps for a key (a bare str for one-column keys)."""
    return hash(key if len(key) > 1 else key[0])


def format_row(cells: Sequence[str]) -> str:
    """One row in canonical form (RFC 4180, quoting only where needed), without newline."""
    buf = io.StringIO()
    # csv quotes a value holding any character of the line terminator: with "\r\n" both CR
    # and LF get quoted (with "\n" alone a lone CR would be written bare and lost on read).
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue()[:-2]


def describe_csv_error(error: csv.Error) -> tuple[str, str]:
    """(message, hint) for Python's csv errors, in the words of BigPanda's rules."""
    text = str(error)
    if "new-line character" in text:
        return (
            "a line break (CR) inside an unquoted value, or CR-only line endings; BigPanda "
            "does not support line breaks in values",
            "remove the CR, or save the file with LF (or CRLF) line endings",
        )
    if "unexpected end of data" in text:
        return ("a quoted value is not closed before the end of the file", "add the closing quote")
    return (f"malformed CSV: {text}", 'quote values holding commas or quotes as "a,b" / "a""b"')


def parse_line(line: str) -> list[str]:
    """The cells of one canonical line."""
    if '"' not in line:
        return line.split(",")
    return next(csv.reader([line], strict=True))


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns): a file read twice is the same file if it is equal."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def is_gzip_path(path: Path) -> bool:
    """Whether `path` names a gzip-compressed table (`csv: table.csv.gz`)."""
    return path.name.endswith(GZIP_SUFFIX)


def lfs_pointer_problem(path: Path, display: str) -> Problem:
    """The one problem reported for a Git LFS pointer found where a table should be."""
    return Problem(
        display,
        1,
        1,
        f"{path.name} is a Git LFS pointer, not the table (its content was not fetched)",
        "run `git lfs pull`, and set `lfs: true` on actions/checkout in CI",
    )


def table_bytes(path: Path) -> Iterator[bytes]:
    """The bytes of a table file in 1 MiB chunks, decompressed (on a second core) for a .gz."""
    if is_gzip_path(path):

        def open_gzip() -> BinaryIO:
            return cast(BinaryIO, gzip.open(path, "rb"))

        return prefetched(open_gzip)

    def plain() -> Iterator[bytes]:
        with path.open("rb") as f:
            yield from iter(lambda: f.read(BLOCK_SIZE), b"")

    return plain()


def table_size_hint(path: Path) -> int:
    """The size of a table file's content without reading it: a .gz's trailer holds it
    (modulo 4 GiB, far above any table BigPanda accepts)."""
    size = path.stat().st_size
    if not is_gzip_path(path) or size < 18:
        return size
    with path.open("rb") as f:
        f.seek(-4, 2)
        return int.from_bytes(f.read(4), "little")


class _TooLarge(Exception):
    """A compressed table grew past BigPanda's file size limit while being decompressed."""


def _capped(chunks: Iterable[bytes], limit: int, seen: Callable[[int], None]) -> Iterator[bytes]:
    """`chunks`, reporting the running total to `seen`; _TooLarge once past `limit` bytes."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        seen(total)
        if total > limit:
            raise _TooLarge
        yield chunk


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces into one reused buffer."""
    digest = hashlib.sha256()
    buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as src:
        while n := src.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


class LineTooLong(Exception):
    """A line longer than any valid row can be."""

    def __init__(self, offset: int, limit: int) -> None:
        self.offset = offset
        self.limit = limit
        super().__init__(f"no line break within {limit:,} bytes from offset {offset}")


def max_line_bytes(width: int) -> int:
    """The longest line a valid row of `width` cells can be: every value at the byte limit,
    quoted, each character a doubled quote, plus the commas."""
    return min(MAX_LINE_BYTES, width * (2 * facts.MAX_VALUE_BYTES + 3) + 2)


class FileDigests:
    """SHA-256 of files, computed on background threads.

    hashlib releases the GIL, so hashing a 500 MB table (the whole cost of planning an
    unchanged one) overlaps the start-up work of loading and checking the manifests.
    """

    def __init__(self) -> None:
        self._results: dict[Path, list[str | BaseException]] = {}
        self._threads: dict[Path, threading.Thread] = {}

    def request(self, path: Path) -> None:
        try:
            if path in self._threads or not path.is_file() or is_gzip_path(path):
                return  # a .gz's own digest is never that of a canonical table: not worth it
        except OSError:
            return  # an unusable path: the manifest's check reports it
        result: list[str | BaseException] = []

        def work() -> None:
            try:
                result.append(sha256_file(path))
            except BaseException as e:  # raised in get()
                result.append(e)

        thread = threading.Thread(target=work, name="bpsync-digest", daemon=True)
        self._results[path], self._threads[path] = result, thread
        thread.start()

    def get(self, path: Path) -> str:
        if path not in self._threads:
            return sha256_file(path)
        self._threads[path].join()
        value = self._results[path][0]
        if isinstance(value, BaseException):
            raise value
        return value


def read_blocks(f: BinaryIO, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, bool]]:
    """(byte offset, bytes ending in a newline, is_last) — blocks never split a line."""
    return split_blocks(iter(lambda: f.read(BLOCK_SIZE), b""), max_line)


def split_blocks(
    chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes, bool]]:
    """Cut a stream of byte chunks into blocks of whole lines (see read_blocks).

    Pieces of a long line are kept in a list and joined once (no quadratic copying); a line
    longer than `max_line` raises LineTooLong rather than being read whole into memory.
    """
    pending: list[bytes] = []
    pending_size = 0
    offset = 0
    for block in chunks:
        cut = block.rfind(b"\n") + 1
        if not cut:
            pending.append(block)
            pending_size += len(block)
            if pending_size > max_line:
                raise LineTooLong(offset, max_line)
            continue
        head = b"".join((*pending, block[:cut])) if pending else block[:cut]
        yield offset, head, False
        offset += len(head)
        pending, pending_size = [block[cut:]], len(block) - cut
    rest = b"".join(pending)
    if rest:
        yield offset, rest, True


def prefetched(open_stream: Callable[[], BinaryIO], depth: int = 4) -> Generator[bytes]:
    """Chunks of a stream read by a background thread.

    zstd, zlib and hashlib release the GIL, so decompressing (and verifying) a snapshot on the
    second core overlaps the Python work done on the chunks: about 1 s less per pass over
    a 500 MB snapshot. Errors of the reader are raised here; stopping early stops it.
    """
    chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            with open_stream() as f:
                while not stop.is_set():
                    chunk = f.read(BLOCK_SIZE)
                    chunks.put(chunk)
                    if not chunk:
                        return
        except BaseException as e:  # handed over to the consumer, raised there
            chunks.put(e)

    worker = threading.Thread(target=work, name="bpsync-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = chunks.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting to put, then let it end
            with contextlib.suppress(queue.Empty):
                chunks.get_nowait()
            worker.join(0.01)


def _only_lines(runs: list[RowBlock], first: int, keep: list[tuple[int, int]]) -> list[RowBlock]:
    """The rows of `runs` on the lines kept: [a, b) ranges of line offsets from `first`."""
    wanted = {first + n for a, b in keep for n in range(a, b)}
    out: list[RowBlock] = []
    for start, lines in runs:
        run: list[str] = []
        for n, line in enumerate(lines, start):
            if n in wanted:
                if not run:
                    run_start = n
                run.append(line)
            elif run:
                out.append((run_start, run))
                run = []
        if run:
            out.append((run_start, run))
    return out


class TableScan:
    """One pass over a table file; see the module docstring for the strategy.

    Configured once, at construction (`keys`, `rows_despite_errors`). Rows are pulled with
    `row_blocks()`, or not wanted with `run()`; either way `result` is the TableInfo, the
    header as read included.
    """

    def __init__(
        self,
        path: Path,
        layout: TableLayout,
        sink: ProblemSink,
        *,
        keys: KeyMode = "check",
        rows_despite_errors: bool = False,
        track_order: bool = False,
        known: KnownSplitter | None = None,
        file_digest: Callable[[], str] | None = None,
    ) -> None:
        self.path = path
        self.layout = layout
        self.sink = sink
        self.width = len(layout.titles)
        self.keyget = itemgetter(*layout.key_indexes)
        self.key_hashes: dict[int, None] = {}
        self.dup_suspects: set[int] = set()
        self.sha = hashlib.sha256()
        # With `file_digest` (the SHA-256 of the file, taken on another core): while the
        # table is canonical its bytes are the canonical bytes, so they are not hashed here
        # (only counted, in `_skipped`); the first non-canonical piece hashes the file's
        # first `_skipped` bytes, then hashing goes on as usual.
        self._file_digest = None if is_gzip_path(path) else file_digest
        self._skipped = 0
        self.rows = 0
        self.line = 0  # last physical line consumed
        self.canonical = True
        self.crlf = False
        # This block's first line number and text before CRLF endings became LF (split lazily).
        self._crlf_block: tuple[int, str, list[str] | None] | None = None
        self.missing_newline = False
        self.header_done = False
        self.header_line = layout.header_line
        self.columns: tuple[str, ...] = ()
        self.size = 0  # bytes of the table (decompressed, for a .gz) read so far
        self._track_keys = keys == "check"  # turned off when the header lacks a key column
        # Instead of the dict of key hashes: every key's hash in file order (8 bytes a row).
        self.key_log: array[int] | None = array("q") if keys == "log" else None
        self._rows_despite_errors = rows_despite_errors  # the duplicate pass reads invalid files
        # With `track_order`: whether every key so far is greater than the one before (rows
        # in key order need no sort to be rendered in key order).
        self._track_order = track_order
        self.keys_ascending = track_order
        self._last_key: Any = None
        # With `known`: each block after the header is first split into runs byte-equal to
        # a trusted baseline (the applied snapshot: canonical rows validated under the same
        # columns, keys unique) and runs that differ. Equal runs only count rows, feed the
        # digest and have their pipes warned about; only the differing runs are decoded,
        # checked and passed on. Keys are then the caller's to settle (`keys="off"`).
        assert known is None or keys == "off"
        self._known = known

    # -- driving ---------------------------------------------------------------------------
    def run(self) -> TableInfo:
        """Scan the whole file for its checks alone; the rows are not wanted."""
        for _ in self.row_blocks():
            pass
        return self.result

    def row_blocks(self) -> Iterator[RowBlock]:
        """The valid data rows, block by block, while no error has been found (or always,
        with `rows_despite_errors`); `result` holds the outcome once exhausted.

        The scan advances only as blocks are pulled, so a consumer that reads rows lazily
        (a plan's row changes) never holds a 500 MB table in memory.
        """
        size = self.path.stat().st_size
        self.result = self._info(size)
        if not self._usable(size):
            self.result = self._info(size)
            return
        gz = is_gzip_path(self.path)
        if not gz:
            self.size = size
        try:
            for offset, raw, last in split_blocks(self._chunks(gz), max_line_bytes(self.width)):
                if offset == 0 and (raw.startswith(BOM) or raw[:2] in UTF16_BOMS):
                    self._bom(raw)
                    self.result = self._info(self.size)
                    return
                if last:
                    self.missing_newline = True
                    self.canonical = False
                    raw += b"\n"
                if self._known is not None and not raw.isascii():
                    # As without `known`, invalid UTF-8 anywhere in the block stops the scan
                    # before any of the block is checked (not after the pieces before it:
                    # their problems, the header's columns, the rows counted would differ).
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        self._decode(raw, offset)
                        self.result = self._info(self.size)
                        return
                pieces = self._split(raw, offset)
                for at, piece, equal_lines, keep in pieces:
                    if equal_lines:
                        if not self._accept_known(piece, equal_lines, at):
                            self.result = self._info(self.size)
                            return
                        continue
                    text = self._decode(piece, at)
                    if text is None:
                        self.result = self._info(self.size)
                        return
                    first = self.line + 1
                    runs = self._block(piece, text)
                    yield from runs if keep is None else _only_lines(runs, first, keep)
        except LineTooLong as e:
            self.sink.error(
                self.line + 1,
                f"no line break within {e.limit:,} bytes (from byte offset {e.offset}), "
                "longer than any valid row; CR-only line endings?",
                "save the file with LF line endings",
            )
            self.result = self._info(self.size)
            return
        except _TooLarge:
            self._too_large(f"more than {facts.MAX_FILE_BYTES:,} bytes once decompressed")
            self.result = self._info(self.size)
            return
        except (OSError, EOFError, zlib.error) as e:
            if not gz:
                raise
            self.sink.error(
                None,
                f"{self.path.name} is truncated or damaged: gzip could not decompress it "
                f"past byte {self.size:,} of the table ({e or type(e).__name__})",
                "compress the table again (`gzip -k table.csv`), or check it out again",
            )
            self.result = self._info(self.size)
            return
        if not self.header_done:
            self.sink.error(1, "the file has no header row", "add the header row")
        elif self.rows == 0 and self.sink.errors == 0:
            self.sink.error(
                2,
                "the table has no data rows; BigPanda needs at least one",
                "add a row, or delete the manifest to retire the table",
            )
        if self.dup_suspects and self.sink.errors < self.sink.cap:
            self.report_duplicates()
        self.result = self._info(self.size)

    def _bom(self, start: bytes) -> None:
        """A byte order mark: Excel's "CSV UTF-8" (UTF-8 BOM) or "Unicode text" (UTF-16)."""
        if start.startswith(BOM):
            self.sink.error(
                1,
                "the file starts with a UTF-8 byte order mark (BOM)",
                "run `bpsync fmt` (it removes the BOM), or save it as UTF-8 without BOM",
                col=1,
            )
            return
        self.sink.error(
            1,
            "the file is UTF-16 (it starts with a UTF-16 byte order mark); bpsync reads UTF-8",
            "run `bpsync fmt` (it re-encodes the file as UTF-8)",
            col=1,
        )

    def _usable(self, size: int) -> bool:
        """Refuse, as one problem each, files that are not a table at all: empty, a Git LFS
        pointer, too large, or named .gz without being gzip."""
        with self.path.open("rb") as f:
            head = f.read(len(LFS_POINTER))
        if size == 0:
            self.sink.error(1, "the file is empty", "add the header row and at least one data row")
            return False
        if head.startswith(LFS_POINTER):
            p = lfs_pointer_problem(self.path, self.sink.path)
            self.sink.error(p.line, p.message, p.hint, col=p.col)
            return False
        if size > facts.MAX_FILE_BYTES:
            self._too_large(f"{size:,} bytes")
            return False
        if is_gzip_path(self.path) and not head.startswith(GZIP_MAGIC):
            self.sink.error(
                None,
                f"{self.path.name} is not gzip-compressed, yet its name ends in .gz",
                "compress it with `gzip`, or drop .gz from its name and from the manifest's csv",
            )
            return False
        return True

    def _too_large(self, what: str) -> None:
        self.sink.error(
            None,
            f"the table is {what}; BigPanda accepts at most {facts.MAX_FILE_BYTES:,}",
            "split the table into several manifests",
        )

    def _chunks(self, gz: bool) -> Iterator[bytes]:
        """The table's bytes in 1 MiB chunks; a .gz is decompressed on a second core and
        counted against the size limit as it streams (its size is known only at the end)."""
        if not gz:
            return table_bytes(self.path)

        def seen(total: int) -> None:
            self.size = total

        return _capped(table_bytes(self.path), facts.MAX_FILE_BYTES, seen)

    def _info(self, size: int) -> TableInfo:
        return TableInfo(
            rows=self.rows,
            canonical_sha256=self._hexdigest(),
            is_canonical=self.canonical,
            size=size,
            ok=self.sink.errors == 0,
            line_endings_crlf=self.crlf,
            missing_final_newline=self.missing_newline,
            columns=self.columns,
        )

    def _digest(self, data: bytes) -> None:
        """Feed canonical bytes to the table's SHA-256 (see `file_digest`)."""
        if self._file_digest is not None:
            if self.canonical:
                self._skipped += len(data)
                return
            self._catch_up()
        self.sha.update(data)

    def _catch_up(self) -> None:
        """Hash the file's first `_skipped` bytes (canonical, so its canonical bytes), and
        hash as usual from now on."""
        self._file_digest = None
        left = self._skipped
        with self.path.open("rb") as f:
            while left > 0 and (chunk := f.read(min(BLOCK_SIZE, left))):
                self.sha.update(chunk)
                left -= len(chunk)

    def _hexdigest(self) -> str:
        if self._file_digest is not None and self._skipped:
            if self.canonical and self.sink.errors == 0 and self._skipped == self.size:
                return self._file_digest()  # every byte of the file, canonical
            self._catch_up()
        return self.sha.hexdigest()

    def _decode(self, raw: bytes, offset: int) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = self.line + raw.count(b"\n", 0, e.start) + 1
            col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
            self.sink.error(
                line,
                f"invalid UTF-8 at byte offset {offset + e.start} (byte 0x{raw[e.start]:02x})",
                "save the file as UTF-8, or convert it with `bpsync fmt --encoding cp1252` "
                '(Excel\'s "CSV (Comma delimited)"; or the encoding it was saved in)',
                col=col,
            )
            return None

    # -- a block split against a known baseline ---------------------------------------------
    def _split(
        self, raw: bytes, offset: int
    ) -> Iterator[tuple[int, bytes, int, list[tuple[int, int]] | None]]:
        """(byte offset, piece, its line count if equal to the baseline, else 0, the lines
        of it whose rows are passed on or None for all) of a block: the whole block as one
        piece to check, unless `known` splits the rows after the header."""
        if self._known is None:
            yield offset, raw, 0, None
            return
        if not self.header_done:
            cut = raw.find(b"\n") + 1
            yield offset, raw[:cut], 0, None  # the header is always checked
            offset, raw = offset + cut, raw[cut:]
            if not raw or not self.header_done:
                return
        pieces = self._known(raw)
        for i, (equal, piece, lines) in enumerate(pieces):
            if not equal and b'"' in piece and i + 1 < len(pieces):
                # A quote may open a value that runs on over the lines after the piece (an
                # unterminated quote): checked alone, the piece would end the record at its
                # end, and the equal lines after it would count as rows. So the rest of the
                # block is checked as one, as without `known`; only the rows of the
                # differing pieces in it are passed on (the equal ones matched the baseline).
                keep, at = [], 0
                for eq, p, n in pieces[i:]:
                    count = p.count(b"\n") if not eq else n
                    if not eq:
                        keep.append((at, at + count))
                    at += count
                yield offset, b"".join(p for _, p, _ in pieces[i:]), 0, keep
                return
            yield offset, piece, lines if equal else 0, None
            offset += len(piece)

    def _accept_known(self, piece: bytes, n: int, offset: int) -> bool:
        """`n` lines equal to the baseline's: counted and hashed, not parsed (see `known`).
        False when the piece cannot be decoded (an error was reported)."""
        first = self.line + 1
        if b'"' in piece or b"\r" in piece:
            # Quoted values are rare; checking them again costs little and keeps a record
            # split over lines (a quoted line break) an error whatever the baseline holds.
            text = self._decode(piece, offset)
            if text is not None:
                self._block(piece, text)
            return text is not None
        self.line += n
        self.rows += n
        self._digest(piece)
        if b"|" in piece:
            self._pipes(piece.decode("utf-8").split("\n")[:-1], first)
        return True

    # -- one block ---------------------------------------------------------------------------
    def _block(self, raw: bytes, text: str) -> list[RowBlock]:
        """Check one block; the runs of its valid rows that are to be passed on."""
        self._crlf_block = None
        if "\r" in text:
            self.canonical = False
            raw = b""
            if "\r\n" in text:
                # CRLF endings: accepted on read, canonicalised on write (SPEC §4). A CR left
                # after this is a lone one: the slow path reports it.
                self.crlf = True
                # Kept to name a line break inside a value as it was written (CRLF or LF).
                self._crlf_block = (self.line + 1, text, None)
                text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        lines.pop()  # text ends with "\n"
        first = self.line + 1
        if not self.header_done:
            self._header(lines[0], first)
            lines = lines[1:]
            first += 1
            raw = b""  # the digest of this block is taken from its lines instead
        self.line = first - 1 + len(lines)
        if not lines:
            return []
        if '"' not in text and "\r" not in text and self._fast(lines, text, first):
            # Plain lines are canonical already: no quoting is needed where there is none.
            self._digest(raw or ("\n".join(lines) + "\n").encode("utf-8"))
        else:
            numbered = self._slow(lines, first)
            canon = [line for _, line in numbered]
            if canon != lines:
                self.canonical = False
            if canon:
                self._digest(("\n".join(canon) + "\n").encode("utf-8"))
            return self._runs(numbered) if self._passing_rows() else []
        return [(first, lines)] if self._passing_rows() else []

    def _passing_rows(self) -> bool:
        return self.sink.errors == 0 or self._rows_despite_errors

    @staticmethod
    def _runs(numbered: list[tuple[int, str]]) -> list[RowBlock]:
        """Valid rows in runs of consecutive lines (invalid rows leave gaps)."""
        runs: list[RowBlock] = []
        run: list[str] = []
        start = 0
        for lineno, line in numbered:
            if run and lineno != start + len(run):
                runs.append((start, run))
                run = []
            if not run:
                start = lineno
            run.append(line)
        if run:
            runs.append((start, run))
        return runs

    def _header(self, line: str, lineno: int) -> None:
        self.header_done = True
        try:
            titles = next(csv.reader([line], strict=True))
        except csv.Error as e:
            message, hint = describe_csv_error(e)
            self.sink.error(lineno, f"header row: {message}", hint)
            # The header is not hashed, yet the table may stay canonical: with `file_digest`
            # the file's bytes would no longer be the hashed bytes, so hash from now on.
            self._file_digest = None
            return
        canon = format_row(titles)
        self.header_line = canon
        self.columns = tuple(titles)
        if canon != line:
            self.canonical = False
        self._digest((canon + "\n").encode("utf-8"))
        self._check_header(titles, lineno)

    def _check_header(self, titles: list[str], lineno: int) -> None:
        expected = self.layout.titles
        if tuple(titles) == expected:
            return
        # Rows follow the header as written: count their cells against it, so one header
        # mistake is one error, not one per row.
        self.width = len(titles)
        seen: set[str] = set()
        for col, title in enumerate(titles, 1):
            if title in seen:
                self.sink.error(
                    lineno,
                    f"column {title!r} appears twice in the header",
                    "remove the duplicate column",
                    col=col,
                )
            seen.add(title)
        missing = [t for t in expected if t not in seen]
        meant = {}
        for col, title in enumerate(titles, 1):
            if title in expected:
                continue
            near = _near_title(title, missing)
            if near is not None:
                meant[near] = title
                self.sink.error(
                    lineno,
                    f"column {title!r} is not a field of the manifest; it differs from the "
                    f"field {near!r} only in case or spaces",
                    f"rename the column to {near!r} exactly (titles must match exactly)",
                    col=col,
                )
                continue
            self.sink.error(
                lineno,
                f"column {title!r} is not a field of the manifest",
                "remove the column, or add it to the manifest's fields",
                col=col,
            )
        for title in missing:
            if title in meant:
                continue  # said above, with the column that was meant to be it
            self.sink.error(
                lineno,
                f"column {title!r} of the manifest is missing",
                "add the column to the header and every row",
            )
        if not self.sink.errors and len(titles) == len(expected):
            # Same titles in another order: BigPanda matches by title, but rows must follow
            # the header, so we simply read columns in the header's order.
            self.layout = TableLayout(
                tuple(titles), tuple(titles.index(expected[i]) for i in self.layout.key_indexes)
            )
            self.keyget = itemgetter(*self.layout.key_indexes)
        elif not all(t in titles for t in self.layout.key_titles):
            self._track_keys = False  # a key column is missing: no keys to compare
        else:
            self.layout = TableLayout(
                tuple(titles), tuple(titles.index(t) for t in self.layout.key_titles)
            )
            self.keyget = itemgetter(*self.layout.key_indexes)

    def _fast(self, lines: list[str], text: str, first: int) -> bool:
        """Checks for a block of plain lines; False sends the block to the slow path.

        Every step is one C-level call over the block: per-line comma counts stand in
        for splitting rows (splitting every row into cells costs 5x more).
        """
        if max(map(len, lines)) > _SAFE_LINE_CHARS or not all(lines):
            return False  # a possibly over-long value, or a blank line
        if set(map(str.count, lines, repeat(","))) != {self.width - 1}:
            return False  # a row with too few or too many cells
        self._keys(self._key_values(lines), first)
        if facts.ARRAY_DELIMITER in text:
            self._pipes(lines, first)
        self.rows += len(lines)
        return True

    def _key_values(self, lines: list[str]) -> Iterator[object]:
        """The key of each plain line: the str of one key column, a tuple of several."""
        last = max(self.layout.key_indexes)
        if self.layout.key_indexes == (0,):
            return map(_first, map(str.partition, lines, repeat(",")))
        return map(self.keyget, map(str.split, lines, repeat(","), repeat(last + 1)))

    def _keys(self, keys: Iterable[object], first: int) -> None:
        """Remember key hashes; a repeat marks hashes for the exact duplicate pass."""
        if self.keys_ascending:
            keys = self._check_order(list(keys))
        if self.key_log is not None:
            self.key_log.extend(map(hash, keys))
            return
        if not self._track_keys:
            return
        hashes = list(map(hash, keys))
        before = len(self.key_hashes)
        self.key_hashes.update(zip(hashes, repeat(None)))
        if len(self.key_hashes) - before != len(hashes):
            # Rare: which of these repeat (here or in an earlier block) is settled exactly by
            # report_duplicates, so suspecting the whole block costs nothing in the end.
            self.dup_suspects.update(hashes)

    def _check_order(self, keys: list[Any]) -> list[Any]:
        """Clear `keys_ascending` unless `keys` continue the strictly ascending run.

        Keys are str (one key column) or tuples of str, compared as `change_order` compares
        RowChange keys (a str compares as its 1-tuple does)."""
        if not keys:
            return keys
        last = self._last_key
        if (last is not None and not last < keys[0]) or not all(
            map(operator.lt, keys, islice(keys, 1, None))
        ):
            self.keys_ascending = False
        self._last_key = keys[-1]
        return keys

    def _pipes(self, lines: list[str], first: int) -> None:
        for i, line in enumerate(lines):
            if "|" not in line:
                continue
            for col, value in enumerate(parse_line(line), 1):
                if facts.ARRAY_DELIMITER in value:
                    self.sink.warning(
                        first + i,
                        f"value {value[:40]!r} holds '|': BigPanda splits it into a list",
                        'wrap it as """value""" to keep a literal pipe, or remove it',
                        col=col,
                    )

    def _slow(self, lines: list[str], first: int) -> list[tuple[int, str]]:
        """Row-by-row checks with csv.reader; returns (line number, canonical line) of each
        valid row of the block."""
        out: list[tuple[int, str]] = []
        base = 0  # index in `lines` where the current reader started
        reader = csv.reader(lines, strict=True)
        consumed = 0  # lines the current reader has consumed
        rows: list[list[str]] = []
        row_lines: list[int] = []
        while True:
            start = first + base + consumed
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                self.sink.error(start, *describe_csv_error(e))
                # csv.reader cannot resume after an error; restart after the bad line(s).
                base += max(reader.line_num, consumed + 1)
                reader = csv.reader(lines[base:], strict=True)
                consumed = 0
                continue
            physical = lines[base + consumed : base + reader.line_num]
            span = reader.line_num - consumed
            consumed = reader.line_num
            if not self._check_row(row, start, span) or not self._no_bare_cr(row, physical, start):
                continue
            rows.append(row)
            row_lines.append(start)
            out.append((start, format_row(row)))
        if rows:
            self._keys(map(self.keyget, rows), row_lines[0])
        self.rows += len(rows)
        return out

    def _breaks_between(self, line: int, span: int) -> str:
        """How the line breaks inside a row spanning `span` lines from `line` were written."""
        block = self._crlf_block
        if block is None or not block[0] <= line:
            return "LF"
        first, text, split = block
        if split is None:
            split = text.split("\n")
            self._crlf_block = (first, text, split)
        ends = split[line - first : line - first + span - 1]
        crlf = sum(1 for e in ends if e.endswith("\r"))
        return "CRLF" if crlf == len(ends) else "LF" if crlf == 0 else "CRLF and LF"

    def _no_bare_cr(self, row: list[str], physical: list[str], line: int) -> bool:
        """csv drops a CR outside quotes as if it ended the line; BigPanda would not."""
        if any("\r" in text for text in physical) and not any("\r" in v for v in row):
            self.sink.error(
                line,
                "a line break (CR) outside quotes, or CR-only line endings; BigPanda does not "
                "support line breaks in values",
                "remove the CR, or save the file with LF (or CRLF) line endings",
            )
            return False
        return True

    def _check_row(self, row: list[str], line: int, span: int) -> bool:
        if not row:
            self.sink.error(line, "blank line", "remove the blank line")
            return False
        ok = True
        if span > 1:
            kind = self._breaks_between(line, span)
            self.sink.error(
                line,
                f"a value holds a line break ({kind}); BigPanda does not support line breaks "
                "in values",
                "remove the line break from the value",
            )
            ok = False
        if len(row) != self.width:
            self.sink.error(
                line,
                f"the row has {len(row)} cells; the header has {self.width}",
                "add or remove cells (quote values holding commas)",
            )
            return False
        for col, value in enumerate(row, 1):
            if "\r" in value or "\n" in value:
                self.sink.error(
                    line,
                    f"a value holds a line break ({_break_kind(value)}); BigPanda does not "
                    "support line breaks in values",
                    "remove it",
                    col=col,
                )
                ok = False
            elif len(value) > _SAFE_LINE_CHARS and len(value.encode()) > facts.MAX_VALUE_BYTES:
                self.sink.error(
                    line,
                    f"value is {len(value.encode()):,} bytes; BigPanda's limit is "
                    f"{facts.MAX_VALUE_BYTES:,} bytes",
                    "shorten the value",
                    col=col,
                )
                ok = False
            elif facts.ARRAY_DELIMITER in value:
                self.sink.warning(
                    line,
                    f"value {value[:40]!r} holds '|': BigPanda splits it into a list",
                    'wrap it as """value""" to keep a literal pipe, or remove it',
                    col=col,
                )
        return ok

    # -- duplicates -------------------------------------------------------------------------
    def report_duplicates(self) -> None:
        """Second, exact pass over the file for the keys whose hashes are in dup_suspects."""
        first_seen: dict[tuple[str, ...], tuple[int, list[str]]] = {}
        layout = self.layout

        rescan = TableScan(
            self.path,
            self.layout,
            ProblemSink(str(self.path)),
            keys="off",
            rows_despite_errors=True,
        )
        for first, lines in rescan.row_blocks():
            for i, line in enumerate(lines):
                row = parse_line(line)
                key = layout.key_of(row)
                if key_hash(key) not in self.dup_suspects:
                    continue
                if key in first_seen:
                    line0, row0 = first_seen[key]
                    shown = ", ".join(
                        f"{layout.titles[k]}={v!r}"
                        for k, v in zip(layout.key_indexes, key, strict=True)
                    )
                    if row0 == row:
                        self.sink.error(
                            first + i,
                            f"duplicate row (same as line {line0})",
                            "remove one of the two rows",
                        )
                    else:
                        self.sink.error(
                            first + i,
                            f"duplicate key {shown} (first at line {line0})",
                            "each key may appear once: merge or remove a row",
                        )
                else:
                    first_seen[key] = (first + i, row)


def scan_table(path: Path, layout: TableLayout, sink: ProblemSink) -> TableInfo:
    """Check `path` against every rule of SPEC §4, streaming (`TableScan.row_blocks` to also
    receive the rows)."""
    return TableScan(path, layout, sink).run()


class Writable(Protocol):
    """Where a canonical table is written: a file, or a gzip stream around one."""

    def write(self, data: bytes, /) -> int: ...


def write_canonical(
    source: Path,
    dest: Writable,
    layout: TableLayout,
    sink: ProblemSink | None = None,
    *,
    check_duplicates: bool = True,
) -> TableInfo:
    """Write the canonical form of `source` to `dest` while checking it.

    Check `TableInfo.ok`: on an invalid table what was written is incomplete.
    """
    # Apply re-writes tables its plan already validated: no dict of keys, flat memory.
    keys: KeyMode = "check" if check_duplicates else "off"
    scan = TableScan(source, layout, sink or ProblemSink(str(source)), keys=keys)
    started = False
    for _first, lines in scan.row_blocks():
        if not started:
            dest.write((scan.header_line + "\n").encode("utf-8"))
            started = True
        dest.write(("\n".join(lines) + "\n").encode("utf-8"))
    return scan.result


def _break_kind(text: str) -> str:
    """The line breaks in `text`, named as editors name them: CRLF, LF, CR (or several)."""
    kinds = []
    if "\r\n" in text:
        kinds.append("CRLF")
    rest = text.replace("\r\n", "")
    if "\n" in rest:
        kinds.append("LF")
    if "\r" in rest:
        kinds.append("CR")
    return " and ".join(kinds) or "LF"


def _near_title(title: str, candidates: list[str]) -> str | None:
    """The one candidate equal to `title` but for case and spaces, if exactly one is."""

    def folded(t: str) -> str:
        return "".join(t.split()).casefold()

    found = [c for c in candidates if folded(c) == folded(title)]
    return found[0] if len(found) == 1 else None
