"""BigPanda: API facts, base-URL checks and (lazily) the HTTP client.

Import-light on purpose: `validate` and `plan` import this package and must not load httpx,
so the client's names are resolved on first use (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpsync.bigpanda.urls import check_base_url, resolve_base_url

if TYPE_CHECKING:
    from bpsync.bigpanda.client import (
        BigPandaClient,
        Enrichment,
        EnrichmentSpec,
        Job,
        RateLimiter,
        UploadReceipt,
    )

_CLIENT_NAMES = frozenset(
    {"BigPandaClient", "Enrichment", "EnrichmentSpec", "Job", "RateLimiter", "UploadReceipt"}
)

__all__ = [
    "BigPandaClient",
    "Enrichment",
    "EnrichmentSpec",
    "Job",
    "RateLimiter",
    "UploadReceipt",
    "check_base_url",
    "resolve_base_url",
]


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from bpsync.bigpanda import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
