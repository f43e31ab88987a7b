"""BigPanda: API facts, base-URL checks and the API's value objects.

Import-light on purpose: `validate` and `plan` import this package and must not load httpx;
the HTTP client is imported from `bpsync.bigpanda.client` by the code that talks to BigPanda.
"""

from __future__ import annotations

from bpsync.bigpanda.models import Enrichment, EnrichmentSpec, Job, UploadReceipt
from bpsync.bigpanda.urls import check_base_url, resolve_base_url

__all__ = [
    "Enrichment",
    "EnrichmentSpec",
    "Job",
    "UploadReceipt",
    "check_base_url",
    "resolve_base_url",
]
