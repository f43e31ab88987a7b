"""What bpsync remembers between runs: the state model (``model``), the backend contract and
the logic every backend shares (``base``), the snapshot format (``snapshot``), the lock
(``lock``), and the backends: a local directory (``local``, ``.bpsync/``) and an S3 bucket
(``s3``, imported only when configured). Standard library only, so importing it costs nothing
at start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bpsync.state.backend import StateBackend
from bpsync.state.local import LocalBackend
from bpsync.state.lock import LockInfo, lock_held
from bpsync.state.model import (
    FORMAT_VERSION,
    PendingJob,
    State,
    TableState,
    dumps_state,
    referenced_snapshots,
    state_digest,
    state_from_dict,
    state_to_dict,
)

if TYPE_CHECKING:
    from bpsync.config import Config

__all__ = [
    "FORMAT_VERSION",
    "LocalBackend",
    "LockInfo",
    "PendingJob",
    "State",
    "StateBackend",
    "TableState",
    "dumps_state",
    "lock_held",
    "open_backend",
    "referenced_snapshots",
    "state_digest",
    "state_from_dict",
    "state_to_dict",
]


def open_backend(config: Config, fault: Callable[[str], None] | None = None) -> StateBackend:
    """The state backend that bpsync.yaml configures.

    `fault` is a test seam (crash matrix, tests/test_crash.py): passed on to the local
    backend, which calls it at each of its FAULT_POINTS while writing."""
    if config.state.backend == "s3":
        from bpsync.state.s3 import S3Backend  # optional dependency: boto3

        return S3Backend.from_config(config.state)
    return LocalBackend(config.state_dir, fault=fault)
