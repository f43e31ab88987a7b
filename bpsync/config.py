"""The project configuration, `bpsync.yaml` (SPEC §1), found from a directory upwards.

Environments (SPEC §8): `environments:` names BigPanda organisations. Selecting one (the
`environment` argument, else `BPSYNC_ENV`) overrides the top-level `api` and `state` keys
with the environment's, key by key. An environment that sets no state location of its own
gets one below the shared one, so two organisations never share state:

- local backend: the environment "sets a location" when its `state` has `path`; otherwise
  its state lives in `<path>/NAME` (`.bpsync/NAME` by default);
- s3 backend: the environment "sets a location" when its `state` has `bucket` or `prefix`;
  otherwise its state lives under `<prefix>/NAME` in the (inherited) bucket.

Every environment is checked when the file is loaded, selected or not (base URL, s3 bucket,
state location), so `validate` reports a broken production entry while working on sandbox.
Two environments whose state locations are equal, or one inside the other (a snapshot prune
in one would delete the other's files), are a configuration error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from bpsync.bigpanda import facts
from bpsync.endpoint import Endpoint
from bpsync.errors import ConfigError, InvalidInput, UsageError
from bpsync.yamlfile import LoadedYaml, check_schema, load_yaml

CONFIG_NAME = "bpsync.yaml"
API_URL_ENV = "BIGPANDA_API_URL"
ENVIRONMENT_ENV = "BPSYNC_ENV"
DEFAULT_REFRESH_MAX_ROWS = 20_000
__all__ = ["Config", "Endpoint", "load_config", "requires_environment"]
# An environment name becomes a directory name and a PR-comment marker; the schemas say so too.
ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# Commands that read neither state nor BigPanda, so they run without an environment (§8):
# `show` renders a saved plan, which names its own environment.
ENVIRONMENT_FREE_COMMANDS = frozenset({"validate", "fmt", "show"})


def requires_environment(command: str) -> bool:
    """Whether `command` (as typed: "plan", "apply", "validate"…) needs an environment
    when bpsync.yaml defines environments. Pass the answer to `load_config`."""
    return command not in ENVIRONMENT_FREE_COMMANDS


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
class RefreshConfig:
    max_rows: int = DEFAULT_REFRESH_MAX_ROWS


@dataclass(frozen=True)
class Config:
    root: Path  # the directory holding bpsync.yaml (or the start directory without one)
    file: Path | None
    api: ApiConfig
    manifests: tuple[str, ...]
    state: StateConfig
    resolved_base_url: str
    refresh: RefreshConfig = RefreshConfig()
    environment: str | None = None  # the selected environment; None without one
    environments: tuple[str, ...] = ()  # every environment defined, in file order

    @property
    def state_dir(self) -> Path:
        return self.root / self.state.path

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.resolved_base_url, self.api.version)

    @property
    def has_environments(self) -> bool:
        return bool(self.environments)

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


def load_config(
    start: Path,
    env: Mapping[str, str],
    environment: str | None = None,
    *,
    need_environment: bool = False,
) -> Config:
    """Load bpsync.yaml from `start` or a parent; defaults when there is none.

    `environment` is the `--env` value; when None, `BPSYNC_ENV` in `env` is used. With
    `need_environment` (see `requires_environment`) and environments defined, having none
    is a UsageError listing them. An unknown name, or a name given while bpsync.yaml defines
    no environments, is always a UsageError.
    """
    start = start.resolve()
    if not start.is_dir():
        raise ConfigError(f"{start} is not a directory", hint="check the -C option")
    path = find_config(start)
    raw: dict[str, Any] = {}
    doc: LoadedYaml | None = None
    shown = CONFIG_NAME
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
    root = path.parent if path else start
    source = _Source(root, path, shown, doc)
    names = tuple(_environments(source, raw, env))  # checks every one of them
    name = _select(source, names, _chosen(environment, env), need_environment)
    # The selected environment again, now with BIGPANDA_API_URL, which overrides its URL too.
    # With environments, the top level alone may be incomplete (each one adds its bucket).
    config = _build(source, raw, env, name=name, check_state=name is not None or not names)
    return replace(config, environments=names)


@dataclass(frozen=True)
class _Source:
    root: Path
    path: Path | None
    shown: str  # bpsync.yaml as messages name it
    doc: LoadedYaml | None

    def at(self, *keys: str) -> str:
        """`bpsync.yaml:LINE:COL` of the key at `keys`, for messages."""
        mark = self.doc.key_marks.get(tuple(keys)) if self.doc else None
        return f"{self.shown}:{mark[0]}:{mark[1]}" if mark else self.shown


def _build(
    source: _Source,
    raw: dict[str, Any],
    env: Mapping[str, str],
    *,
    name: str | None = None,
    use_env_url: bool = True,
    check_state: bool = True,
) -> Config:
    """A Config from top-level keys merged with environment `name`'s (when given)."""
    from bpsync.bigpanda.urls import check_base_url, resolve_base_url

    api_raw = dict(raw.get("api") or {})
    state_raw = dict(raw.get("state") or {})
    where = source.shown if source.path else "the defaults"
    if name is not None:
        spec = (raw.get("environments") or {}).get(name) or {}
        api_raw.update(spec.get("api") or {})
        state_raw = _environment_state(state_raw, dict(spec.get("state") or {}), name)
        where = f"{source.at('environments', name)}: environment {name!r}"
    api = ApiConfig(**api_raw)
    state = StateConfig(**state_raw)
    env_url = env.get(API_URL_ENV) if use_env_url else None
    try:
        url = check_base_url(resolve_base_url(api.region, api.base_url, env_url))
    except ConfigError as e:
        if env_url:
            raise ConfigError(
                f"environment variable {API_URL_ENV}: {e.message}", hint=e.hint
            ) from None
        raise ConfigError(f"{where}: {e.message}", hint=e.hint) from None
    if check_state and state.backend == "s3" and not state.bucket:
        raise ConfigError(
            f"{where}: state.backend is s3 but state.bucket is not set",
            hint="add `bucket: <name>` under `state:`",
        )
    manifests = tuple(raw.get("manifests") or ("tables/**/*.yaml",))
    refresh = RefreshConfig(**(raw.get("refresh") or {}))
    return Config(source.root, source.path, api, manifests, state, url, refresh, name)


def _environment_state(top: dict[str, Any], own: dict[str, Any], name: str) -> dict[str, Any]:
    """The environment's state keys over the top-level ones, with its own location unless
    it sets one (`path` for local; `bucket` or `prefix` for s3)."""
    merged = {**top, **own}
    if merged.get("backend", "local") == "s3":
        if "bucket" not in own and "prefix" not in own:
            prefix = str(merged.get("prefix", "")).strip("/")
            merged["prefix"] = f"{prefix}/{name}" if prefix else name
    elif "path" not in own:
        merged["path"] = f"{str(merged.get('path', StateConfig.path)).rstrip('/')}/{name}"
    return merged


def _environments(
    source: _Source, raw: dict[str, Any], env: Mapping[str, str]
) -> dict[str, Config]:
    """Every environment, resolved and checked (BIGPANDA_API_URL left out: it applies to the
    selected one only, and is checked there); state locations must not overlap."""
    names = list(raw.get("environments") or {})
    built = {n: _build(source, raw, env, name=n, use_env_url=False) for n in names}
    seen: list[tuple[str, tuple[str, ...]]] = []
    for name, config in built.items():
        location = _location(config.state, source.root)
        for other, taken in seen:
            if location[: len(taken)] == taken or taken[: len(location)] == location:
                same = location == taken
                raise ConfigError(
                    _clash(source, other, name, built, same=same), hint=_clash_hint(config)
                )
        seen.append((name, location))
    return built


def _location(state: StateConfig, root: Path) -> tuple[str, ...]:
    """A state location as path segments, so equality and nesting are prefix tests."""
    if state.backend == "s3":
        prefix = tuple(p for p in state.prefix.split("/") if p)
        return ("s3", state.endpoint_url or "", state.bucket or "", *prefix)
    # casefold: on macOS and Windows `Prod` and `prod` are one directory
    parts = os.path.normpath(os.path.abspath(root / state.path)).casefold()
    return ("local", *PurePosixPath(Path(parts).as_posix()).parts)


def _shown_location(config: Config) -> str:
    state = config.state
    if state.backend == "s3":
        return f"s3://{state.bucket}/{state.prefix.strip('/')}".rstrip("/")
    return Path(os.path.normpath(state.path)).as_posix()


def _clash(
    source: _Source, first: str, second: str, built: Mapping[str, Config], *, same: bool
) -> str:
    a, b = _shown_location(built[first]), _shown_location(built[second])
    relation = "the same state location" if same else "nested state locations"
    return (
        f"{source.at('environments', second)}: environments {first!r} "
        f"({source.at('environments', first)}) and {second!r} share {relation} "
        f"({a} and {b}); each organisation needs its own state"
    )


def _clash_hint(config: Config) -> str:
    key = "state.prefix (or state.bucket)" if config.state.backend == "s3" else "state.path"
    return (
        f"give environment {config.environment!r} its own {key}, outside the other's, "
        "or leave it unset to get one per environment"
    )


def _chosen(environment: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, where it came from), or None when no environment was asked for."""
    if environment is not None:
        return environment, f"--env {environment}"
    from_env = env.get(ENVIRONMENT_ENV, "").strip()
    return (from_env, f"{ENVIRONMENT_ENV}={from_env}") if from_env else None


def _select(
    source: _Source,
    names: tuple[str, ...],
    chosen: tuple[str, str] | None,
    need_environment: bool,
) -> str | None:
    """The selected environment's name, after the usage rules of SPEC §8."""
    listed = ", ".join(names)
    if not names:
        if chosen is not None:
            raise UsageError(
                f"{chosen[1]}: {source.shown if source.path else 'this project'} "
                "defines no environments",
                hint=f"drop --env (and unset {ENVIRONMENT_ENV}), or declare `environments:` "
                f"in {CONFIG_NAME}",
            )
        return None
    if chosen is None:
        if need_environment:
            raise UsageError(
                f"{source.shown} defines environments; choose one with --env NAME "
                f"(or {ENVIRONMENT_ENV})",
                hint=f"environments: {listed}",
            )
        return None
    name, given = chosen
    if name not in names:
        import difflib  # only for hints: not loaded on the way to a valid run

        close = difflib.get_close_matches(name, names, n=1)
        mean = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(
            f"{given}: unknown environment {name!r}",
            hint=f"{mean}environments in {source.shown}: {listed}",
        )
    return name
