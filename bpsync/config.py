"""The project configuration, `bpsync.yaml` (SPEC §1), found from a directory upwards."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpsync.bigpanda import facts
from bpsync.errors import ConfigError, InvalidInput
from bpsync.yamlfile import check_schema, load_yaml

CONFIG_NAME = "bpsync.yaml"
API_URL_ENV = "BIGPANDA_API_URL"


@dataclass(frozen=True)
class ApiConfig:
    version: str = facts.DEFAULT_API_VERSION
    region: str = "us"
    base_url: str | None = None
    token_env: str = "BIGPANDA_TOKEN"


@dataclass(frozen=True)
class StateConfig:
    backend: str = "local"
    path: str = ".bpsync"
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True)
class Config:
    root: Path  # the directory holding bpsync.yaml (or the start directory without one)
    file: Path | None
    api: ApiConfig
    manifests: tuple[str, ...]
    state: StateConfig
    resolved_base_url: str

    @property
    def state_dir(self) -> Path:
        return self.root / self.state.path

    def token(self, env: Mapping[str, str]) -> str:
        """The API token; never printed, never read from a file."""
        token = env.get(self.api.token_env, "").strip()
        if not token:
            raise ConfigError(
                f"{self.api.token_env} is not set",
                hint=f"export {self.api.token_env}=<your BigPanda "
                f"{facts.API_VERSIONS[self.api.version].token_kind}> "
                "(or run `bpsync plan --no-refresh` to plan offline)",
            )
        return token

    def has_token(self, env: Mapping[str, str]) -> bool:
        return bool(env.get(self.api.token_env, "").strip())


def find_config(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path, env: Mapping[str, str]) -> Config:
    """Load bpsync.yaml from `start` or a parent; defaults when there is none."""
    start = start.resolve()
    if not start.is_dir():
        raise ConfigError(f"{start} is not a directory", hint="check the -C option")
    path = find_config(start)
    raw: dict[str, Any] = {}
    if path is not None:
        shown = os.path.relpath(path, start)  # "bpsync.yaml", or "../bpsync.yaml" from below
        doc, problems = load_yaml(path, shown)
        if doc is not None and not isinstance(doc.data, dict):
            raise ConfigError(
                f"{path}: the configuration must be a mapping of keys",
                hint="see README, 'bpsync.yaml'",
            )
        if doc is not None:
            problems += check_schema(doc, "config", shown)
            raw = doc.data
        if problems:
            raise InvalidInput(problems)
    return _build(path.parent if path else start, path, raw, env)


def _build(root: Path, path: Path | None, raw: dict[str, Any], env: Mapping[str, str]) -> Config:
    from bpsync.bigpanda.urls import check_base_url, resolve_base_url

    api = ApiConfig(**(raw.get("api") or {}))
    state = StateConfig(**(raw.get("state") or {}))
    where = CONFIG_NAME if path else "the defaults"
    try:
        url = check_base_url(resolve_base_url(api.region, api.base_url, env.get(API_URL_ENV)))
    except ConfigError as e:
        if env.get(API_URL_ENV):
            raise ConfigError(
                f"environment variable {API_URL_ENV}: {e.message}", hint=e.hint
            ) from None
        raise ConfigError(f"{where}: {e.message}", hint=e.hint) from None
    if state.backend == "s3" and not state.bucket:
        raise ConfigError(
            f"{where}: state.backend is s3 but state.bucket is not set",
            hint="add `bucket: <name>` under `state:`",
        )
    manifests = tuple(raw.get("manifests") or ("tables/**/*.yaml",))
    return Config(root, path, api, manifests, state, url)
