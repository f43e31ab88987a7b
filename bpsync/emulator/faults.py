"""Fault injection for the emulator: what tests and `--errors-…` flags make go wrong.

Every method is thread-safe: tests arm faults from the test thread while handler threads and
job threads consume them.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bpsync.bigpanda.facts import READ_COUNT_KEYS

DEFAULT_JOB_FAILURE = "injected failure: the emulator was told to fail this job"


@dataclass
class _RequestFault:
    remaining: int
    status: int
    retry_after: str | None
    path_contains: str | None
    method: str | None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        return self.path_contains is None or self.path_contains in path


@dataclass
class _PageFault:
    remaining: int
    status: int
    page: int | None


@dataclass(frozen=True)
class ReadFaults:
    """How the v2.1 table read answers (api doc §15.1 leaves these open)."""

    max_per_page: int | None = None  # serve at most this many rows a page
    count_key: str = READ_COUNT_KEYS[0]
    empty_as_null: bool = False
    forbidden: bool = False  # 403, as for a key without the read permission


@dataclass(frozen=True)
class RequestFault:
    """An armed fault that fired: answer with `status` (and `Retry-After` when set)."""

    status: int
    retry_after: str | None


class Faults:
    """Switches and one-shot faults; `take_*` consume them, the rest set them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[_RequestFault] = []
        self._drops: deque[int] = deque()
        self._job_failures: deque[str] = deque()
        self._latency = 0.0
        self._hang = False
        self._fraction = 0.0
        self._fraction_statuses: tuple[int, ...] = (503,)
        self._rng = random.Random()
        self._read = ReadFaults()
        self._read_failures: list[_PageFault] = []
        self._moves_left: int | None = 0  # None: the table moves after every page

    # ------------------------------------------------------------ arming

    def set_latency(self, seconds: float) -> None:
        """Delay every request by `seconds` before answering."""
        with self._lock:
            self._latency = max(0.0, seconds)

    def fail_next_requests(
        self,
        n: int,
        *,
        status: int = 503,
        retry_after: float | str | None = None,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next `n` matching requests with `status`, before reading any body.

        A 429 gets `Retry-After: 1` unless another value is given.
        """
        if retry_after is None and status == 429:
            retry_after = 1
        after = None if retry_after is None else str(retry_after)
        with self._lock:
            self._requests.append(_RequestFault(n, status, after, path_contains, method))

    def fail_fraction(
        self, fraction: float, statuses: Sequence[int] = (503,), *, seed: int | None = None
    ) -> None:
        """Answer about `fraction` of all later requests with one of `statuses`, at random
        (load tests); a 429 gets `Retry-After: 1`. Armed one-shot faults come first."""
        with self._lock:
            self._fraction = min(1.0, max(0.0, fraction))
            self._fraction_statuses = tuple(statuses) or (503,)
            self._rng = random.Random(seed)

    def drop_upload_after(self, bytes: int, times: int = 1) -> None:
        """Close the socket, without answering, after `bytes` of the next `times` uploads."""
        with self._lock:
            self._drops.extend([max(0, bytes)] * times)

    def fail_next_jobs(self, n: int, reason: str = DEFAULT_JOB_FAILURE) -> None:
        """The next `n` jobs end `failed` with `reason`, whatever the table holds."""
        with self._lock:
            self._job_failures.extend([reason] * n)

    def hang_jobs(self, on: bool = True) -> None:
        """While on, new jobs reach `started` and never finish."""
        with self._lock:
            self._hang = on

    # The v2.1 table read (api doc §15.1): how the emulator bends the answer.

    def cap_per_page(self, n: int | None) -> None:
        """Serve at most `n` rows a page whatever `per_page` asks (None: no cap)."""
        self._set_read(max_per_page=None if n is None else max(1, n))

    def set_count_key(self, key: str) -> None:
        """Announce the total under `key` (`total_results`, or the older `total_count`)."""
        self._set_read(count_key=key)

    def empty_as_null(self, on: bool = True) -> None:
        """While on, empty cells come back as JSON null instead of ""."""
        self._set_read(empty_as_null=on)

    def forbid_read(self, on: bool = True) -> None:
        """While on, reads answer 403, like a key without the read permission."""
        self._set_read(forbidden=on)

    def fail_read_pages(self, n: int, *, status: int = 503, page: int | None = None) -> None:
        """The next `n` reads (of page `page` only, when given) answer `status`."""
        with self._lock:
            self._read_failures.append(_PageFault(n, status, page))

    def move_total_between_pages(self, times: int | None = 1) -> None:
        """After each of the next `times` pages served (None: every page, for good), the
        table gains a row, so a reader sees the announced total move mid-read."""
        with self._lock:
            self._moves_left = None if times is None else max(0, times)

    def _set_read(self, **changes: Any) -> None:
        with self._lock:
            self._read = replace(self._read, **changes)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._drops.clear()
            self._job_failures.clear()
            self._latency = 0.0
            self._hang = False
            self._fraction = 0.0
            self._read = ReadFaults()
            self._read_failures.clear()
            self._moves_left = 0

    # ------------------------------------------------------------ consuming

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @property
    def hanging(self) -> bool:
        with self._lock:
            return self._hang

    def take_request_fault(self, method: str, path: str) -> RequestFault | None:
        with self._lock:
            for fault in self._requests:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    self._requests = [f for f in self._requests if f.remaining > 0]
                    return RequestFault(fault.status, fault.retry_after)
            if self._fraction and self._rng.random() < self._fraction:
                status = self._rng.choice(self._fraction_statuses)
                return RequestFault(status, "1" if status == 429 else None)
        return None

    @property
    def read(self) -> ReadFaults:
        with self._lock:
            return self._read

    def take_read_failure(self, page: int) -> int | None:
        """The status a read of `page` must answer instead of rows, if one is armed."""
        with self._lock:
            for fault in self._read_failures:
                if fault.remaining > 0 and fault.page in (None, page):
                    fault.remaining -= 1
                    self._read_failures = [f for f in self._read_failures if f.remaining > 0]
                    return fault.status
        return None

    def take_table_move(self) -> bool:
        """Whether the table must change now, after a page was served."""
        with self._lock:
            if self._moves_left is None:
                return True
            if self._moves_left > 0:
                self._moves_left -= 1
                return True
            return False

    def take_drop(self) -> int | None:
        with self._lock:
            return self._drops.popleft() if self._drops else None

    def take_job_failure(self) -> str | None:
        with self._lock:
            return self._job_failures.popleft() if self._job_failures else None
