"""BigPanda: API facts, base-URL checks, the API's value objects and (lazily) the HTTP client.

Import-light on purpose: `validate` and `plan` import this package and must not load httpx,
so the client's names are resolved on first use (PEP 562 module `__getattr__`); the value
objects (`bpsync.bigpanda.models`) carry no transport and load eagerly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpsync.bigpanda.models import Enrichment, EnrichmentSpec, Job, UploadReceipt
from bpsync.bigpanda.urls import check_base_url, resolve_base_url

if TYPE_CHECKING:
    from bpsync.bigpanda.client import BigPandaClient, RateLimiter

_CLIENT_NAMES = frozenset({"BigPandaClient", "RateLimiter"})

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
