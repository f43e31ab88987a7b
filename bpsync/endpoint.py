"""The BigPanda endpoint a configuration talks to, and that state is bound to (SPEC §5).

Its own module (standard library only) so that the state model can record it without
importing the configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """The BigPanda endpoint a configuration talks to: what state is bound to (SPEC §5).

    Organisations on one base URL share an Endpoint; only the token tells them apart."""

    base_url: str  # resolved: BIGPANDA_API_URL > api.base_url > api.region, normalised
    api_version: str

    def __str__(self) -> str:
        return f"{self.base_url} (API {self.api_version})"
