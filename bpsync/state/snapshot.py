"""The snapshot byte format every backend stores, and its one reader and one writer.

A snapshot is the canonical CSV of an applied table, compressed as one zstd frame at level 1,
single-threaded, with neither the content size nor a checksum in the frame (the SHA-256 id
checks the content), so the same table always gives the same bytes (git sees no change, and a
snapshot can move between backends unchanged). Its id is the SHA-256 hex of the plain bytes;
it is stored as ``<id>.csv.zst``. Snapshots written before zstd are gzip (deflate level 1, no
file name, mtime 0) and named ``<id>.csv.gz``: they are still read, never written, and stay
until pruned. The reader tells the two apart by their first bytes, not by the name.

Both directions stream, so memory stays flat for 500 MB tables. The decoder runs on a thread
beside the differ's busy one, where every release of the GIL costs a wait to get it back: it
works in steps of 4 MiB of plain bytes, each one call into zstd and one into hashlib.

* :class:`SnapshotEncoder` reads a table file and yields the compressed bytes, hashing the plain
  bytes on the way; when the table ends it compares the digest with the id *before* finishing
  the frame (its last block), so a table that does not hash to its id can never be stored
  complete;
* :class:`SnapshotDecoder` decompresses a stored snapshot and, on reaching its end, checks the
  bytes against the id, so a damaged snapshot can never be diffed against silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

import zstandard

from bpsync.errors import StateCorrupt, StateError
from bpsync.state.model import is_sha256_hex

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SNAPSHOT_DIR = "snapshots"
SNAPSHOT_SUFFIX = ".csv.zst"  # every snapshot written
GZIP_SNAPSHOT_SUFFIX = ".csv.gz"  # snapshots written before zstd: read, never written
SNAPSHOT_SUFFIXES = (SNAPSHOT_SUFFIX, GZIP_SNAPSHOT_SUFFIX)  # the order they are looked for in

# 1 MiB reads: large enough that hashing and zstd dominate, small enough that memory stays flat.
CHUNK = 1 << 20
# The decoder's step, in plain bytes (its buffer's size): a quarter as many GIL hand-overs as
# 1 MiB steps, and still flat memory.
DECODE_STEP = 4 << 20

_SNAPSHOT_NAME = re.compile(r"([0-9a-f]{64})\.csv\.(?:zst|gz)")

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def check_snapshot_id(sha256: str) -> str:
    """``sha256`` if it is a snapshot id; StateError otherwise (ids become file and key names,
    so ``../`` and friends must never get that far)."""
    if not is_sha256_hex(sha256):
        raise StateError(f"not a snapshot id (64 lowercase hex digits): {sha256!r}")
    return sha256


def snapshot_name(sha256: str) -> str:
    """``<sha256>.csv.zst``, the name a snapshot is written as inside the snapshots
    directory/prefix."""
    return f"{check_snapshot_id(sha256)}{SNAPSHOT_SUFFIX}"


def snapshot_names(sha256: str) -> tuple[str, ...]:
    """Every name snapshot ``sha256`` may be stored as, in the order to look for them: the
    zstd one first, then the gzip one of older states."""
    check_snapshot_id(sha256)
    return tuple(f"{sha256}{suffix}" for suffix in SNAPSHOT_SUFFIXES)


def snapshot_id(name: str) -> str | None:
    """The id in a snapshot's name (either suffix); None for anything else found beside the
    snapshots."""
    m = _SNAPSHOT_NAME.fullmatch(name)
    return None if m is None else m.group(1)


# -- writing ------------------------------------------------------------------------------------


def _compressor() -> zstandard.ZstdCompressionObj:
    """A fresh zstd stream with the snapshot settings. The size is never passed: zstd would
    write it in the frame and tune itself to it, so the bytes would depend on more than the
    table (and a streamed table's size is not known up front). Single-threaded: zstd's worker
    threads halve the time (100 MB: 0.16 s instead of 0.31 s), but for high-entropy data
    hand out their output in bursts of tens of MiB (41 MiB held for a 50 MiB random table,
    against 9 MiB), which breaks the streaming promise."""
    return zstandard.ZstdCompressor(
        level=1,
        write_checksum=False,
        write_content_size=False,
        write_dict_id=False,
        threads=0,
    ).compressobj()


class DigestMismatch(Exception):
    """Raised from :meth:`SnapshotEncoder.read` when the table does not hash to its id."""

    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


class SnapshotEncoder(io.RawIOBase):
    """A table file as snapshot bytes (see the module docstring). ``actual`` is the digest of
    the plain bytes once the table has been read to its end."""

    def __init__(self, source: IO[bytes], expected: str) -> None:
        super().__init__()
        self._source = source
        self._expected = expected
        self._digest = hashlib.sha256()
        self._zstd = _compressor()
        self._pool: ThreadPoolExecutor | None = None
        self._pending = bytearray()
        self._done = False
        self.actual: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        while not self._pending and not self._done:
            chunk = self._source.read(CHUNK)
            if chunk:
                # The SHA-256 on a second thread while zstd compresses: both release the GIL
                # (100 MB: ~0.2 s instead of ~0.3 s, before apply's upload can start).
                hashed = self._hasher().submit(self._digest.update, chunk)
                self._pending += self._zstd.compress(chunk)
                hashed.result()
                continue
            self._done = True
            self._stop_hasher()
            self.actual = self._digest.hexdigest()
            if self.actual != self._expected:
                raise DigestMismatch(self.actual)
            # Only now the frame's last block: until it, no reader takes the frame for whole.
            self._pending += self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        with memoryview(buffer) as view:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
        del self._pending[:n]
        return n

    def _hasher(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="bpsync-snapshot-digest")
        return self._pool

    def _stop_hasher(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def close(self) -> None:
        self._stop_hasher()
        if not self.closed:
            self._source.close()
        super().close()


def encoded_size(chunks: Iterable[bytes]) -> int:
    """How many bytes a snapshot of a table made of ``chunks`` takes: the same zstd settings as
    :class:`SnapshotEncoder`, output counted, not kept."""
    zstd = _compressor()
    size = 0
    for chunk in chunks:
        size += len(zstd.compress(chunk))
    return size + len(zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))


def encode_snapshot(source: IO[bytes], sha256: str) -> tuple[SnapshotEncoder, BinaryIO]:
    """The encoder (for its ``actual`` digest) and a buffered stream over it that hands out
    whole reads (an S3 uploader takes one read per part, and parts must be full-sized)."""
    encoder = SnapshotEncoder(source, sha256)
    return encoder, cast(BinaryIO, io.BufferedReader(encoder, CHUNK))


# -- reading ------------------------------------------------------------------------------------


class Readable(Protocol):
    """What a backend hands the decoder: a stream of the stored bytes. Its ``read`` raises
    StateError (or OSError) when the storage fails."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class _Damaged(Exception):
    """What is wrong with a stored snapshot, raised by a codec; the decoder words it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Codec(Protocol):
    def readinto(self, view: memoryview, /) -> int:
        """Plain bytes into ``view``; 0 once the compressed stream has ended whole (else
        :class:`_Damaged`)."""


class _FrameEnd:
    """Where a zstd frame ends, found from its frame and block headers as its bytes pass
    (libzstd's streaming reader reports neither a frame cut short nor bytes after it). Only a
    few bytes per block are looked at: the blocks' content is skipped."""

    def __init__(self) -> None:
        self._header = bytearray()  # the header being read
        self._want = 5  # its size: magic and frame header descriptor, then the rest of it
        self._in_frame_header = True
        self._checksum = False
        self._skip = 0  # bytes of block content (and checksum) still to pass
        self._last = False
        self.done = False

    def feed(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the frame: all of them until it ends."""
        pos, size = 0, len(data)
        while pos < size and not self.done:
            if self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
                self.done = self._last and not self._skip
                continue
            take = min(self._want - len(self._header), size - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == self._want:
                self._parse_header()
        return pos

    def _parse_header(self) -> None:
        header = self._header
        if self._in_frame_header:
            descriptor = header[4]
            single_segment = descriptor & 0x20
            size_field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            dict_field = (0, 1, 2, 4)[descriptor & 0x03]
            full = 5 + (0 if single_segment else 1) + dict_field + size_field
            if len(header) < full:
                self._want = full
                return
            self._checksum = bool(descriptor & 0x04)
            self._in_frame_header = False
        else:
            block = int.from_bytes(header, "little")
            self._last = bool(block & 1)
            rle = (block >> 1) & 3 == 1  # its content is one byte, repeated
            self._skip = 1 if rle else block >> 3
            if self._last:
                self._skip += 4 if self._checksum else 0
                self.done = not self._skip
        self._header = bytearray()
        self._want = 3


class _Zstd:
    """A zstd snapshot: one frame, nothing after it."""

    def __init__(self, head: bytes, read: Callable[[], bytes]) -> None:
        self._head = head
        self._read_body = read
        self._frame = _FrameEnd()
        self._ended = False
        self._extra = False
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], self),  # all zstd calls is read()
            read_size=CHUNK,
            read_across_frames=False,
            closefd=False,
        )

    def read(self, size: int = -1, /) -> bytes:
        """The stored bytes as zstd is to see them: the frame's, then nothing (zstd would take
        bytes after it for another frame, or ignore them)."""
        del size  # zstd asks for CHUNK, and takes what the body gives
        if self._ended:
            return b""
        data, self._head = self._head or self._read_body(), b""
        if not data or self._frame.done:
            self._extra = bool(data)
            self._ended = True
            return b""
        n = self._frame.feed(data)
        if n < len(data):
            self._extra = self._ended = True
        return data[:n]

    def readinto(self, view: memoryview, /) -> int:
        try:
            n = self._reader.readinto(view)
        except zstandard.ZstdError as exc:
            raise _Damaged(str(exc)) from exc
        if n:
            return n
        if not self._frame.done:
            raise _Damaged("it ends too early")
        if not self._ended:  # the frame ended at the end of a read: is there more?
            self.read()
        if self._extra:
            raise _Damaged("unexpected bytes after the zstd frame")
        return 0


class _Gzip:
    """A gzip snapshot, as states written before zstd hold: one member, nothing after it."""

    def __init__(self, head: bytes, read: Callable[[], bytes]) -> None:
        self._head = head
        self._read_body = read
        self._gz = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper, checks CRC and size

    def readinto(self, view: memoryview, /) -> int:
        while True:
            compressed = self._head or self._gz.unconsumed_tail or self._read_body()
            self._head = b""
            if not compressed:
                if not self._gz.eof:
                    raise _Damaged("it ends too early")
                return 0
            if self._gz.eof:
                raise _Damaged("unexpected bytes after the gzip stream")
            try:
                out = self._gz.decompress(compressed, len(view))
            except zlib.error as exc:
                raise _Damaged(str(exc)) from exc
            if self._gz.unused_data:
                raise _Damaged("unexpected bytes after the gzip stream")
            if out:
                view[: len(out)] = out
                return len(out)


class SnapshotDecoder(io.RawIOBase):
    """A stored snapshot's plain bytes, verified against the id when the stream ends.

    The codec is chosen by the first bytes (zstd or gzip), whatever the name. ``where`` names
    the stored snapshot in messages; ``damaged_hint`` says how to recover a damaged one on this
    backend. Once damage is found, every further read raises it again."""

    def __init__(self, body: Readable, sha256: str, where: str, damaged_hint: str) -> None:
        super().__init__()
        self._body = body
        self._codec: _Codec | None = None
        self._expected = sha256
        self._digest = hashlib.sha256()
        self._where = where
        self._damaged_hint = damaged_hint
        self._damage: StateCorrupt | None = None
        self._verified = False

    def readable(self) -> bool:
        return True

    def _corrupt(self, detail: str) -> StateCorrupt:
        self._damage = StateCorrupt(
            f"{self._where}: snapshot is damaged ({detail})", hint=self._damaged_hint
        )
        return self._damage

    def _read_body(self) -> bytes:
        try:
            return self._body.read(CHUNK)
        except OSError as exc:
            raise StateError(f"cannot read snapshot {self._where}: {exc}") from exc

    def _open_codec(self) -> _Codec:
        head = b""
        while len(head) < len(ZSTD_MAGIC) and (more := self._read_body()):
            head += more
        if head.startswith(ZSTD_MAGIC):
            return _Zstd(head, self._read_body)
        if head.startswith(GZIP_MAGIC):
            return _Gzip(head, self._read_body)
        raise _Damaged("it is empty" if not head else "it is neither zstd nor gzip data")

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self._damage is not None:
            raise self._damage
        if self._verified:
            return 0
        with memoryview(buffer) as view:
            if not view.nbytes:
                return 0
            try:
                if self._codec is None:
                    self._codec = self._open_codec()
                n = self._codec.readinto(view)
            except _Damaged as exc:
                raise self._corrupt(exc.detail) from exc
            if n:
                self._digest.update(view[:n])
                return n
        self._verified = True
        actual = self._digest.hexdigest()
        if actual != self._expected:
            raise self._corrupt(f"its content hashes to {actual}")
        return 0

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


def decode_snapshot(body: Readable, sha256: str, where: str, damaged_hint: str) -> BinaryIO:
    """The verified plain bytes of a stored snapshot, as a buffered binary stream."""
    decoder = SnapshotDecoder(body, sha256, where, damaged_hint)
    return cast(BinaryIO, io.BufferedReader(decoder, DECODE_STEP))
