"""Where bpsync talks to BigPanda: picking and checking the API base URL.

Kept free of httpx so `validate` and `plan` can check configuration without loading it.
Precedence (SPEC §1): env `BIGPANDA_API_URL` > `api.base_url` > `api.region`.
Plain `http://` is refused unless the host is loopback, so a token never crosses a
network in clear text; the emulator on 127.0.0.1 stays reachable.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from bpsync.bigpanda.facts import REGIONS
from bpsync.errors import ConfigError

_LOOPBACK_NAMES = frozenset({"localhost"})


def resolve_base_url(region: str, base_url: str | None, env_url: str | None) -> str:
    """The checked base URL: `env_url` wins over `base_url`, which wins over `region`."""
    if env_url:
        return check_base_url(env_url, source="BIGPANDA_API_URL")
    if base_url:
        return check_base_url(base_url, source="api.base_url")
    try:
        return REGIONS[region]
    except KeyError:
        known = ", ".join(sorted(REGIONS))
        raise ConfigError(
            f"unknown BigPanda region {region!r} (api.region)",
            hint=f"use one of: {known}, or set api.base_url to your BigPanda API URL",
        ) from None


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and `::1`: the only hosts allowed plain http."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, source: str = "base URL") -> str:
    """Normalise `url` (no trailing `/`) or raise ConfigError saying what to fix."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ConfigError(
            f"{source} {text!r} is not a valid URL ({exc})",
            hint="write it like https://api.bigpanda.io",
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{source} {text!r} is not a valid http(s) URL",
            hint="write it like https://api.bigpanda.io",
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"{source} {text!r} must not contain credentials, a query or a fragment",
            hint="give only scheme, host, optional port and path prefix",
        )
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"{source} {text!r} uses plain http to a non-loopback host",
            hint="use https:// (the token would travel in clear text); plain http is "
            "allowed only for localhost, 127.0.0.0/8 and ::1",
        )
    return text.rstrip("/")
