"""Byte-level alignment of a table with its applied snapshot: the in-order fast path of the
row diff (`rowdiff`).

A table edited in place is mostly byte-for-byte its snapshot. The snapshot holds canonical
rows that were validated when applied, under the same header, with unique keys; a stretch of
the new file equal to a stretch of it needs neither decoding, nor splitting into lines, nor
the row rules again. So both byte streams are compared in growing slices (memcmp speed); at a
difference both sides are at the start of a line, and the same resynchronisation as the line
aligner's (a changed, added or removed row; else the nearest common line in widening
windows) decides which lines of each side to pass over. The new table's passed-over lines go
to the scan, which checks them and hands them on; the snapshot's are kept (decoded). What is
passed over is resolved exactly afterwards (equal text is a moved, unchanged row; the rest
pairs by key), so a choice here only costs time, never exactness.

The look-ahead never reaches past the end of the block of the new table being split: a
window cut short there passes the rest of the block over as new (and keeps the snapshot
where it is), to be matched as moved rows in the end if they were not new after all.

The file being mostly unequal (rows re-ordered, re-quoted, CRLF endings) shows within the
first lines: `NotAligned` then hands over to the line aligner, which compares canonical
lines, or (past `limit` lines passed over) to hashing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

# Below this a differing slice is located by XOR of two integers; above, by halving first
# (comparing slices is memcmp; converting bytes to an int is not).
_XOR_SPAN = 256
_FIRST_SLICE = 1024
# Snapshot bytes kept ahead of the new block's rest, so that lines can be looked at without
# asking for more (a longer line only takes the general way).
_AHEAD = 1 << 16


class NotAligned(Exception):
    """The new table does not line up with the snapshot byte for byte.

    `too_many`: more lines were passed over than the caller's limit (hashing is the better
    way); otherwise the file looked mostly unequal early on (the line aligner may still
    align its canonical lines)."""

    def __init__(self, too_many: bool = False, share: float = 0.0) -> None:
        super().__init__("too many unmatched lines" if too_many else "not aligned")
        self.too_many = too_many
        self.share = share  # of the new lines read, the share passed over
        self.canonical = False  # whether those lines were in canonical form (the scan says)


def nearest_common(old: Sequence[Hashable], new: Sequence[Hashable]) -> tuple[int, int] | None:
    """(i, j) with new[i] == old[j] and i + j smallest, or None. Old lines are distinct."""
    at = dict(zip(old, range(len(old)), strict=True))
    best: tuple[int, int] | None = None
    for offset, line in enumerate(new):
        if best is not None and offset >= best[0] + best[1]:
            break  # no later line can be nearer
        found = at.get(line)
        if found is not None and (best is None or offset + found < best[0] + best[1]):
            best = (offset, found)
    return best


def first_difference(a: bytes, b: bytes) -> int:
    """Index of the first byte where two unequal slices of one length differ."""
    lo, hi = 0, len(a)
    while hi - lo > _XOR_SPAN:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    x = int.from_bytes(a[lo:hi], "big") ^ int.from_bytes(b[lo:hi], "big")
    return hi - (x.bit_length() + 7) // 8


def take_lines(buf: bytes, start: int, stop: int, count: int) -> list[bytes]:
    """Up to `count` whole lines (without their newline) of buf[start:stop]."""
    span = 128 * count
    while True:
        end = min(stop, start + span)
        parts = buf[start:end].split(b"\n", count)
        if len(parts) > count:
            return parts[:count]
        if end >= stop:
            return parts[:-1]  # the last part follows the last newline: not a whole line
        span *= 4


class ByteAligner:
    """Splits the new table's blocks into runs equal to the snapshot and runs that differ
    (`split`, a `TableScan` `known` splitter); keeps the snapshot's unmatched lines."""

    WINDOW = 64
    WIDER = (512, 4096)
    # Unequal bytes show at once: after this many lines, if more than this share of them
    # was passed over, the file is not a sparse in-place edit of the snapshot's bytes (or
    # edits are dense: each costs more here than on the line aligner's lists of lines).
    EARLY_LINES = 20_000
    EARLY_SHARE = 0.25

    def __init__(self, chunks: Iterator[bytes], limit: int) -> None:
        self.chunks = chunks
        self.limit = limit
        self.old = b""
        self.op = 0  # where the unconsumed snapshot bytes start in `old`
        self.exhausted = False
        self.old_line = 1  # line number of the line at `op`
        self.old_un: list[tuple[int, str]] = []
        self.new_lines = 0
        self.new_passed = 0  # new lines passed over (to the scan, as unmatched)
        self.early_check = True
        self.plain = True  # no line passed over holds a quote or a CR (so each is canonical)
        self.header = self._header()

    # -- the snapshot's bytes --------------------------------------------------------------
    def _more(self) -> bool:
        chunk = next(self.chunks, b"")
        if not chunk:
            self.exhausted = True
            return False
        self.old = self.old[self.op :] + chunk
        self.op = 0
        return True

    def _ensure(self, n: int) -> int:
        """Bytes available after `op`, at least `n` unless the snapshot ends first."""
        while len(self.old) - self.op < n and not self.exhausted:
            self._more()
        return len(self.old) - self.op

    def _header(self) -> str:
        while (cut := self.old.find(b"\n", self.op)) < 0:
            if not self._more():
                return ""  # no whole line: an empty snapshot, never equal to a header
        line = self.old[self.op : cut].decode("utf-8")
        self.op = cut + 1
        self.old_line = 2
        return line

    def _old_lines(self, count: int) -> list[bytes]:
        while True:
            lines = take_lines(self.old, self.op, len(self.old), count)
            if len(lines) >= count or self.exhausted:
                return lines
            self._more()

    def _pass_old(self, lines: list[bytes]) -> None:
        """The next lines of the snapshot are unmatched: keep them, decoded, numbered."""
        first = self.old_line
        self.old_un.extend(
            zip(range(first, first + len(lines)), (x.decode("utf-8") for x in lines), strict=True)
        )
        self.op += sum(map(len, lines)) + len(lines)
        self.old_line += len(lines)

    # -- splitting a block of the new table ------------------------------------------------
    def split(self, raw: bytes, header: str) -> list[tuple[bool, bytes, int]]:
        """Runs of `raw` (whole lines, after the header) equal to the snapshot (True) or
        not (False), in order; the snapshot advances past the equal runs and past the
        lines it passes over. (One loop, few calls: it runs once per difference.)"""
        if header != self.header:
            raise NotAligned  # other columns: no row can be byte-equal
        out: list[tuple[bool, bytes, int]] = []
        j, n = 0, len(raw)
        while j < n:
            if len(self.old) - self.op < n - j + _AHEAD and not self.exhausted:
                self._ensure(n - j + 2 * _AHEAD)
            old, op = self.old, self.op
            # The equal prefix, in slices growing 4x; the differing slice is then searched.
            k, size, most = 0, _FIRST_SLICE, min(n - j, len(old) - op)
            while k < most:
                step = min(size, most - k)
                mine, theirs = raw[j + k : j + k + step], old[op + k : op + k + step]
                if mine != theirs:
                    k += first_difference(mine, theirs)
                    break
                k += step
                size <<= 2
            cut = raw.rfind(b"\n", j, j + k) + 1
            if cut > j:  # whole lines, newline included, equal on both sides
                piece = raw[j:cut]
                lines = piece.count(b"\n")
                out.append((True, piece, lines))
                self.new_lines += lines
                self.old_line += lines
                self.op = op + cut - j
                j = cut
                if j >= n:
                    break
            end = n if self._ensure(1) == 0 else self._resync(raw, j, n)
            lines = raw.count(b"\n", j, end)
            if self.plain and (raw.find(b'"', j, end) >= 0 or raw.find(b"\r", j, end) >= 0):
                self.plain = False  # a line passed over may not be in canonical form
            if out and not out[-1][0]:  # runs on from the last piece passed over
                _, before, count = out.pop()
                out.append((False, before + raw[j:end], count + lines))
            else:
                out.append((False, raw[j:end], lines))
            self.new_lines += lines
            self.new_passed += lines
            j = end
            if self.new_passed + len(self.old_un) > self.limit:
                raise NotAligned(too_many=True)
        self._check_early()
        return out

    def _resync(self, raw: bytes, j: int, n: int) -> int:
        """At differing lines: pass over lines of either side to the next line both share.
        Returns where the new side goes on (the lines before it are passed over)."""
        found = self._one_line_edit(raw, j, n)
        if found is not None:
            return found
        for size in (self.WINDOW, *self.WIDER):
            new_w, old_w = take_lines(raw, j, n, size), self._old_lines(size)
            best = nearest_common(old_w, new_w)
            if best is not None:
                return self._skip(raw, j, new_w, best[0], old_w, best[1])
            if len(new_w) < size:
                return n  # cut short by the block's end: the rest of it is new, for now
        skip = min(len(new_w), len(old_w))  # no common line: a run of changed rows
        return self._skip(raw, j, new_w, skip, old_w, skip)

    def _one_line_edit(self, raw: bytes, j: int, n: int) -> int | None:
        """The usual edits, by four `find`s: a changed, an added or a removed row (the line
        after is common). None when it is none of these."""
        old, op = self.old, self.op
        e1 = raw.find(b"\n", j) + 1  # blocks end with a newline: e1 > j
        e2 = raw.find(b"\n", e1) + 1 if e1 < n else 0
        f1 = old.find(b"\n", op) + 1
        if not f1:
            return None  # an old line longer than the look-ahead: the general way
        f2 = old.find(b"\n", f1) + 1
        if e2 and f2 and raw[e1:e2] == old[f1:f2]:
            self._pass_old_bytes(f1)
            return e1  # a changed row
        if e2 and raw[e1:e2] == old[op:f1]:
            return e1  # an added row
        if f2 and raw[j:e1] == old[f1:f2]:
            self._pass_old_bytes(f1)
            return j  # a removed row
        if not e2:
            return n  # the block ends here: its last line is new, for now
        return None

    def _pass_old_bytes(self, end: int) -> None:
        """The snapshot's line from `op` to `end` (after its newline) is unmatched."""
        self.old_un.append((self.old_line, self.old[self.op : end - 1].decode("utf-8")))
        self.op = end
        self.old_line += 1

    def _skip(
        self, raw: bytes, j: int, new: list[bytes], dj: int, old: list[bytes], di: int
    ) -> int:
        if di:
            self._pass_old(old[:di])
        return j + sum(map(len, new[:dj])) + dj

    def _check_limit(self) -> None:
        if self.new_passed + len(self.old_un) > self.limit:
            raise NotAligned(too_many=True)

    def _check_early(self) -> None:
        if self.early_check and self.new_lines >= self.EARLY_LINES:
            self.early_check = False
            if self.new_passed > self.EARLY_SHARE * self.new_lines:
                e = NotAligned(share=self.new_passed / self.new_lines)
                e.canonical = self.plain
                raise e

    # -- the end ---------------------------------------------------------------------------
    def finish(self) -> int:
        """Keep the snapshot's lines past the last aligned one; the snapshot's row count."""
        while True:
            self._pass_old(take_lines(self.old, self.op, len(self.old), len(self.old)))
            self._check_limit()
            if not self._more():
                if self.op < len(self.old):  # a last line without its newline
                    self._pass_old([self.old[self.op :]])
                return self.old_line - 2
