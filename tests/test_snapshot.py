"""The snapshot codec (bpsync/state/snapshot.py) on its own: zstd written, zstd and the gzip of
older states read, both verified against the id; what each backend does with the names is in
tests/test_state_contract.py."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard
from state_util import CSV, CSV_SHA, gzip_snapshot, random_table

from bpsync.errors import StateCorrupt
from bpsync.state import snapshot
from bpsync.state.snapshot import (
    CHUNK,
    DECODE_STEP,
    DigestMismatch,
    decode_snapshot,
    encode_snapshot,
    encoded_size,
    snapshot_id,
    snapshot_name,
    snapshot_names,
)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def table(size: int) -> bytes:
    """A CSV of about ``size`` bytes that compresses like a real one (~6:1)."""
    rows = (
        f"host-{i:07d},ci-{i * 7919 % 100003},{('prod', 'qa')[i % 2]}\n" for i in range(size // 20)
    )
    out = b"host,ci,env\n" + "".join(rows).encode()
    return out[: max(size, 12)]


def encode(data: bytes, sha: str | None = None) -> bytes:
    _, stream = encode_snapshot(io.BytesIO(data), sha or hashlib.sha256(data).hexdigest())
    with stream:
        return stream.read()


class Body:
    """Stored bytes handed out ``step`` at a time, as a slow store would; counts reads."""

    def __init__(self, data: bytes, step: int | None = None) -> None:
        self._f = io.BytesIO(data)
        self._step = step
        self.closed = False

    def read(self, size: int = -1, /) -> bytes:
        return self._f.read(self._step or size)

    def close(self) -> None:
        self.closed = True


def decode(blob: bytes, sha: str, step: int | None = None) -> bytes:
    with decode_snapshot(Body(blob, step), sha, "snapshots/x", "restore it") as f:
        return f.read()


def damage(blob: bytes, sha: str) -> StateCorrupt:
    with pytest.raises(StateCorrupt) as excinfo:
        decode(blob, sha)
    assert excinfo.value.hint == "restore it"
    assert str(excinfo.value).startswith("snapshots/x: snapshot is damaged (")
    return excinfo.value


# --- names --------------------------------------------------------------------------------------


def test_names() -> None:
    assert snapshot_name(CSV_SHA) == f"{CSV_SHA}.csv.zst"
    assert snapshot_names(CSV_SHA) == (f"{CSV_SHA}.csv.zst", f"{CSV_SHA}.csv.gz")
    for name in snapshot_names(CSV_SHA):
        assert snapshot_id(name) == CSV_SHA
    for other in (f"{CSV_SHA}.csv", f"{CSV_SHA}.csv.zst.tmp", f".{CSV_SHA}.csv.zst", "README"):
        assert snapshot_id(other) is None


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 128 * 1024 + 1, 3 * CHUNK + 17])
def test_zstd_round_trip(size: int) -> None:
    data = table(size) if size else b""
    sha = hashlib.sha256(data).hexdigest()
    blob = encode(data)
    assert blob[:4] == ZSTD_MAGIC
    assert decode(blob, sha) == data
    assert decode(blob, sha, step=7) == data  # a store that hands out a few bytes at a time
    # Any zstd reader takes it: one frame, readable as a stream.
    assert zstandard.ZstdDecompressor().stream_reader(blob).read() == data
    assert encoded_size([data[:5], data[5:]]) == len(blob)


def test_frame_holds_nothing_but_the_table() -> None:
    blob = encode(CSV)
    params = zstandard.get_frame_parameters(blob)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert not params.has_checksum and params.dict_id == 0
    assert blob[4] == 0  # frame header descriptor: no size, no checksum, no dictionary


def test_same_table_same_bytes(tmp_path: Path) -> None:
    data = table(3 * CHUNK)
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    first = encode(data)
    assert encode(data) == first
    _, stream = encode_snapshot(path.open("rb"), sha)
    with stream:
        assert stream.read() == first  # from a file, read in whole chunks
    # However the stream is read: in small reads, or whole.
    _, stream = encode_snapshot(io.BytesIO(data), sha)
    with stream:
        assert b"".join(iter(lambda: stream.read(1000), b"")) == first


def test_wrong_id_never_yields_a_whole_frame(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    actual, _ = random_table(big, 3 * CHUNK)
    encoder, stream = encode_snapshot(big.open("rb"), "c" * 64)
    handed_out = bytearray()
    with stream, pytest.raises(DigestMismatch) as excinfo:
        while chunk := stream.read(64 * 1024):
            handed_out += chunk
    assert excinfo.value.actual == actual and encoder.actual == actual
    assert len(handed_out) > CHUNK  # compressed bytes did go out before the table ended...
    partial = zstandard.ZstdDecompressor().decompressobj()
    partial.decompress(bytes(handed_out))
    assert not partial.eof  # ...but never the frame's end: no store can take it for whole
    assert "ends too early" in str(damage(bytes(handed_out), actual))


# --- reading ------------------------------------------------------------------------------------


def test_gzip_snapshot_of_an_older_state_is_read() -> None:
    data = table(3 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    assert decode(gzip_snapshot(data), sha) == data
    assert decode(gzip_snapshot(data), sha, step=7) == data
    assert decode(gzip_snapshot(b""), hashlib.sha256(b"").hexdigest()) == b""


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda blob: blob[:-1], "it ends too early"),
        (lambda blob: blob[: len(blob) // 2], "it ends too early"),
        (lambda blob: blob[:4], "it ends too early"),
        (lambda blob: blob + b"x", "unexpected bytes after the zstd frame"),
        (lambda blob: blob + blob, "unexpected bytes after the zstd frame"),
        (lambda blob: blob + b"\0" * CHUNK, "unexpected bytes after the zstd frame"),
        (lambda blob: encode(b"application,owner\ncrm,eve\n"), "its content hashes to "),
        (lambda blob: b"", "it is empty"),
        (lambda blob: b"junk", "it is neither zstd nor gzip data"),
        (lambda blob: b"\x28\xb5", "it is neither zstd nor gzip data"),
    ],
)
def test_damaged_zstd_snapshot(make: object, detail: str) -> None:
    blob = encode(table(CHUNK))
    sha = hashlib.sha256(table(CHUNK)).hexdigest()
    assert detail in str(damage(make(blob), sha))  # type: ignore[operator]


def test_flipped_bit_never_reads_as_other_content() -> None:
    data = table(CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    blob = encode(data)
    positions = {*range(4, 12), *range(12, len(blob), len(blob) // 20), len(blob) - 1}
    for where in sorted(positions):
        for bit in (0x01, 0x10, 0x80):
            flipped = bytearray(blob)
            flipped[where] ^= bit
            try:
                read = decode(bytes(flipped), sha)
            except StateCorrupt:
                continue  # zstd refused the frame, or the digest differed
            # Only the frame header has bits that change nothing (an unused one, a larger
            # window): the content is then the table's, as the digest showed.
            assert read == data and where < 6, (where, bit)


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda blob: blob[:-12], "it ends too early"),
        (lambda blob: gzip_snapshot(b"application,owner\ncrm,eve\n"), "its content hashes to "),
        (lambda blob: blob + b"x", "unexpected bytes after the gzip stream"),
        (lambda blob: blob[:10] + b"\xff" + blob[11:], "invalid"),
    ],
)
def test_damaged_gzip_snapshot(make: object, detail: str) -> None:
    assert detail in str(damage(make(gzip_snapshot(CSV)), CSV_SHA))  # type: ignore[operator]


def test_codec_is_told_by_the_bytes_not_the_name() -> None:
    # The decoder never sees the name: either codec under either name reads the same.
    assert decode(encode(CSV), CSV_SHA) == CSV
    assert decode(gzip_snapshot(CSV), CSV_SHA) == CSV


def test_damage_stays_reported() -> None:
    blob = encode(CSV)[:-1]
    with decode_snapshot(Body(blob), CSV_SHA, "snapshots/x", "restore it") as f:
        for _ in range(2):  # a caller that carries on reading never gets a clean end
            with pytest.raises(StateCorrupt, match="ends too early"):
                f.read()


def test_decoder_works_in_large_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step is one call into zstd and one into hashlib, so the decoding thread hands the
    GIL back and forth as few times as it can: count the plain bytes per hashlib call."""
    data = os.urandom(64) * (5 * DECODE_STEP // 64) + b"end\n"
    sha = hashlib.sha256(data).hexdigest()
    blob = encode(data)
    updates: list[int] = []

    class CountingSha:
        def __init__(self) -> None:
            self._sha = hashlib.sha256()

        def update(self, chunk: memoryview) -> None:
            updates.append(len(chunk))
            self._sha.update(chunk)

        def hexdigest(self) -> str:
            return self._sha.hexdigest()

    monkeypatch.setattr(snapshot, "hashlib", SimpleNamespace(sha256=CountingSha))
    with decode_snapshot(Body(blob), sha, "snapshots/x", "restore it") as f:
        while f.read(CHUNK):  # what the differ's reading thread asks for
            pass
    assert sum(updates) == len(data)
    assert updates[:-1] == [DECODE_STEP] * (len(updates) - 1), updates
    assert DECODE_STEP >= 4 * CHUNK
