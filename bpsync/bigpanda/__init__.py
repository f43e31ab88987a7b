"""BigPanda: API facts, base-URL checks and the API's value objects.

Import-light on purpose: `validate` and `plan` import this package and must not load httpx;
the HTTP client is imported from `bpsync.bigpanda.client` by the code that talks to BigPanda.
The names below are loaded on first use, so that `from bpsync.bigpanda import facts` (what
loading a manifest needs) loads nothing more.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpsync.bigpanda.models import Enrichment, EnrichmentSpec, Job, UploadReceipt
    from bpsync.bigpanda.urls import check_base_url, resolve_base_url

_HOMES = {
    "Enrichment": "models",
    "EnrichmentSpec": "models",
    "Job": "models",
    "UploadReceipt": "models",
    "check_base_url": "urls",
    "resolve_base_url": "urls",
}
__all__ = [
    "Enrichment",
    "EnrichmentSpec",
    "Job",
    "UploadReceipt",
    "check_base_url",
    "resolve_base_url",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
