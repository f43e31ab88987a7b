"""The state backend contract, under the name other modules import it by.

The contract and the logic every backend shares live in :mod:`bpsync.state.base`; the
backends are :mod:`bpsync.state.local` (a directory) and :mod:`bpsync.state.s3` (a bucket).
"""

from __future__ import annotations

from bpsync.state.base import StateBackend

__all__ = ["StateBackend"]
