"""State bound to its BigPanda endpoint (SPEC §5): one organisation's ids never meet another's.

State records the endpoint it was applied to (resolved base URL and API version). A command
that would use state against another endpoint refuses before it sends anything, naming both
and the ways on: the right `--env`, or `bpsync state rebind` after checking. State written
before endpoints were recorded adopts the endpoint it is first used with by a command that
talks to BigPanda (the caller writes that, and says so once).

Organisations on one base URL differ only by their token, which is never stored; that case
is caught after the refresh instead (`bpsync.refresh.check_found`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bpsync.config import API_URL_ENV
from bpsync.endpoint import Endpoint
from bpsync.errors import EndpointMismatch
from bpsync.state.model import State


@dataclass(frozen=True)
class Binding:
    """The state in memory bound to the endpoint, and whether it adopted it just now."""

    state: State
    adopted: bool  # unbound state that records tables: the caller writes it and says so


def bind(
    state: State,
    endpoint: Endpoint,
    *,
    location: str,
    environment: str | None,
    environments: Sequence[str],
    env: Mapping[str, str],
) -> Binding:
    """`state` bound to `endpoint`; EndpointMismatch when it belongs to another one.

    State that records no enrichment (never applied, or only failed first attempts) holds
    no organisation's ids, so it belongs nowhere yet: it takes `endpoint` silently."""
    if state.endpoint == endpoint:
        return Binding(state, adopted=False)
    if not records_enrichments(state):
        return Binding(state.bound_to(endpoint), adopted=False)
    if state.endpoint is None:
        return Binding(state.bound_to(endpoint), adopted=True)
    raise EndpointMismatch(
        f"the state in {location} belongs to {state.endpoint}, but this command would use "
        f"it against {endpoint}{_for(environment)}; nothing was sent",
        hint=_ways_on(environment, environments, env),
    )


def records_enrichments(state: State) -> bool:
    """Whether `state` holds any BigPanda id: an enrichment, or a job still pending (a
    create only intended, with no id yet, holds none)."""
    return any(
        ts.enrichment_id or (ts.pending and (ts.pending.enrichment_id or ts.pending.job_id))
        for ts in state.tables.values()
    )


def adopted_note(location: str, endpoint: Endpoint) -> str:
    return (
        f"The state in {location} records no BigPanda endpoint (an earlier bpsync wrote it); "
        f"it is now bound to {endpoint}, where it is first used."
    )


def _for(environment: str | None) -> str:
    return f" (environment {environment!r})" if environment else ""


def _ways_on(environment: str | None, environments: Sequence[str], env: Mapping[str, str]) -> str:
    env_flag = f"--env {environment} " if environment else ""
    ways = []
    if environments:
        ways.append(
            f"choose the environment this state belongs to (--env: {', '.join(environments)})"
        )
    if env.get(API_URL_ENV):
        ways.append(f"unset {API_URL_ENV} (or point it at the state's endpoint)")
    ways.append(
        "if these enrichments really live there now, check, then rebind the state: "
        f"`bpsync {env_flag}state rebind`"
    )
    return "; or ".join(ways)
