"""The snapshot byte format every backend stores, and its one reader and one writer.

A snapshot is the canonical CSV of an applied table, gzip-compressed with deflate level 1, no
file name and mtime 0, so the same table always gives the same bytes (git sees no change, and a
snapshot can move between backends unchanged). Its id is the SHA-256 hex of the plain bytes.

Both directions stream in 1 MiB chunks, so memory stays flat for 500 MB tables:

* :class:`SnapshotEncoder` reads a table file and yields the compressed bytes, hashing the plain
  bytes on the way; when the table ends it compares the digest with the id *before* handing out
  the gzip trailer, so a table that does not hash to its id can never be stored complete;
* :class:`SnapshotDecoder` decompresses a stored snapshot and, on reaching its end, checks the
  bytes against the id, so a damaged snapshot can never be diffed against silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import struct
import zlib
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

from bpsync.errors import StateCorrupt, StateError
from bpsync.state.model import is_sha256_hex

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SNAPSHOT_DIR = "snapshots"
SNAPSHOT_SUFFIX = ".csv.gz"

# 1 MiB reads: large enough that hashing and zlib dominate, small enough that memory stays flat.
CHUNK = 1 << 20

_SNAPSHOT_NAME = re.compile(r"([0-9a-f]{64})\.csv\.gz")

# The header Python's gzip module writes for compresslevel=1, mtime=0 and no file name: magic,
# deflate, no flags, mtime 0, XFL 4 (fastest), OS 255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


def check_snapshot_id(sha256: str) -> str:
    """``sha256`` if it is a snapshot id; StateError otherwise (ids become file and key names,
    so ``../`` and friends must never get that far)."""
    if not is_sha256_hex(sha256):
        raise StateError(f"not a snapshot id (64 lowercase hex digits): {sha256!r}")
    return sha256


def snapshot_name(sha256: str) -> str:
    """``<sha256>.csv.gz``, the name of a snapshot inside the snapshots directory/prefix."""
    return f"{check_snapshot_id(sha256)}{SNAPSHOT_SUFFIX}"


def snapshot_id(name: str) -> str | None:
    """The id in a snapshot's name; None for anything else found beside the snapshots."""
    m = _SNAPSHOT_NAME.fullmatch(name)
    return None if m is None else m.group(1)


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
        self._crc = 0
        self._size = 0
        # The settings of gzip.GzipFile(compresslevel=1), so the bytes are those of gzip too.
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        self._pending = bytearray(_GZIP_HEADER)
        self._done = False
        self.actual: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        while not self._pending and not self._done:
            chunk = self._source.read(CHUNK)
            if chunk:
                self._digest.update(chunk)
                self._crc = zlib.crc32(chunk, self._crc)
                self._size += len(chunk)
                self._pending += self._deflate.compress(chunk)
                continue
            self._done = True
            self.actual = self._digest.hexdigest()
            if self.actual != self._expected:
                raise DigestMismatch(self.actual)
            self._pending += self._deflate.flush()
            self._pending += struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        with memoryview(buffer) as view:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
        del self._pending[:n]
        return n

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


def encoded_size(chunks: Iterable[bytes]) -> int:
    """How many bytes a snapshot of a table made of ``chunks`` takes: the same deflate settings
    as :class:`SnapshotEncoder`, output counted, not kept."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    size = len(_GZIP_HEADER) + 8  # header and trailer (CRC-32, length)
    for chunk in chunks:
        size += len(deflate.compress(chunk))
    return size + len(deflate.flush())


def encode_snapshot(source: IO[bytes], sha256: str) -> tuple[SnapshotEncoder, BinaryIO]:
    """The encoder (for its ``actual`` digest) and a buffered stream over it that hands out
    whole reads (an S3 uploader takes one read per part, and parts must be full-sized)."""
    encoder = SnapshotEncoder(source, sha256)
    return encoder, cast(BinaryIO, io.BufferedReader(encoder, CHUNK))


class Readable(Protocol):
    """What a backend hands the decoder: a stream of the stored bytes. Its ``read`` raises
    StateError (or OSError) when the storage fails."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class SnapshotDecoder(io.RawIOBase):
    """A stored snapshot's plain bytes, verified against the id when the stream ends.

    ``where`` names the stored snapshot in messages; ``damaged_hint`` says how to recover a
    damaged one on this backend."""

    def __init__(self, body: Readable, sha256: str, where: str, damaged_hint: str) -> None:
        super().__init__()
        self._body = body
        self._gz = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper, checks CRC and size
        self._expected = sha256
        self._digest = hashlib.sha256()
        self._where = where
        self._damaged_hint = damaged_hint
        self._pending = b""
        self._verified = False

    def readable(self) -> bool:
        return True

    def _corrupt(self, detail: str) -> StateCorrupt:
        return StateCorrupt(
            f"{self._where}: snapshot is damaged ({detail})", hint=self._damaged_hint
        )

    def _read_body(self) -> bytes:
        try:
            return self._body.read(CHUNK)
        except OSError as exc:
            raise StateError(f"cannot read snapshot {self._where}: {exc}") from exc

    def _fill(self) -> None:
        """Decompress until there are bytes to hand out or the snapshot has ended."""
        while not self._pending and not self._verified:
            compressed = self._gz.unconsumed_tail or self._read_body()
            if not compressed:
                if not self._gz.eof:
                    raise self._corrupt("it ends too early")
                self._verified = True
                actual = self._digest.hexdigest()
                if actual != self._expected:
                    raise self._corrupt(f"its content hashes to {actual}")
                return
            if self._gz.eof:
                raise self._corrupt("unexpected bytes after the gzip stream")
            try:
                out = self._gz.decompress(compressed, CHUNK)
            except zlib.error as exc:
                raise self._corrupt(str(exc)) from exc
            if self._gz.unused_data:
                raise self._corrupt("unexpected bytes after the gzip stream")
            self._digest.update(out)
            self._pending = out

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self._fill()
        with memoryview(buffer) as view:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


def decode_snapshot(body: Readable, sha256: str, where: str, damaged_hint: str) -> BinaryIO:
    """The verified plain bytes of a stored snapshot, as a buffered binary stream."""
    decoder = SnapshotDecoder(body, sha256, where, damaged_hint)
    return cast(BinaryIO, io.BufferedReader(decoder, CHUNK))
