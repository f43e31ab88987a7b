"""Table manifests (`tables/<name>.yaml`, SPEC §1): loading, discovery and rule checks."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpsync.bigpanda import facts
from bpsync.config import ENVIRONMENT_NAME, Config
from bpsync.errors import Problem, display_path
from bpsync.table import TableLayout
from bpsync.yamlfile import LoadedYaml, check_schema, load_yaml

DEFAULT_MAX_DELETE_FRACTION = 0.5


@dataclass(frozen=True)
class Field:
    title: str
    type: str
    tag_name: str | None = None
    override_existing: bool | None = None

    @property
    def is_key(self) -> bool:
        return self.type == facts.QUERY_TAG

    @property
    def target_tag(self) -> str:
        return self.tag_name or self.title

    def wire(self) -> dict[str, Any]:
        """The field as BigPanda's schema object writes it (keys left out when unset)."""
        out: dict[str, Any] = {"title": self.title, "type": self.type}
        if self.tag_name is not None:
            out["tag_name"] = self.tag_name
        if self.override_existing is not None:
            out["override_existing"] = self.override_existing
        return out


@dataclass(frozen=True)
class Manifest:
    name: str
    path: Path
    display: str  # path relative to the project root, for messages
    map_name: str
    description: str | None
    active: bool
    when: str | None
    csv_path: Path
    csv_display: str
    enrichment_id: str | None
    max_delete_fraction: float
    fields: tuple[Field, ...]
    environments: tuple[str, ...] | None = None  # None: every environment (SPEC §8)

    def applies_to(self, environment: str | None) -> bool:
        """Whether the table exists in `environment` (None: no environment selected)."""
        return environment is None or self.environments is None or environment in self.environments

    @property
    def layout(self) -> TableLayout:
        titles = tuple(f.title for f in self.fields)
        keys = tuple(i for i, f in enumerate(self.fields) if f.is_key)
        return TableLayout(titles, keys)

    @property
    def key_titles(self) -> tuple[str, ...]:
        return tuple(f.title for f in self.fields if f.is_key)

    def schema(self) -> dict[str, Any]:
        """What bpsync applies of this manifest; state keeps it, plans diff it."""
        return {
            "map_name": self.map_name,
            "description": self.description,
            "active": self.active,
            "when": self.when,
            "fields": [f.wire() for f in self.fields],
        }


def discover(config: Config) -> list[Path]:
    """Manifest files matching the configured globs, sorted, each once."""
    found: set[Path] = set()
    state_dir = config.state_dir.resolve()
    for pattern in config.manifests:
        for p in config.root.glob(pattern):
            if p.is_file() and state_dir not in p.resolve().parents:
                found.add(p)
    return sorted(found)


def load_manifests(
    config: Config,
    on_csv: Callable[[Path], None] | None = None,
    *,
    every_environment: bool = False,
) -> tuple[list[Manifest], list[Problem]]:
    """The manifests of the selected environment (`config.environment`; all of them with
    `every_environment`, or when none is selected) and every problem found in any manifest
    (not the CSVs): a problem in a table of another environment still counts.

    `on_csv(path)` hears of each returned table as soon as its manifest is parsed, before
    the slower checks, so a caller can start reading the table meanwhile.
    """
    wanted = None if every_environment else config.environment
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    for path in discover(config):
        manifest, found = load_manifest(
            path, config.root, on_csv, environments=config.environments, environment=wanted
        )
        problems += found
        if manifest is not None:
            manifests.append(manifest)
    problems += _check_names(manifests)
    problems += _check_result_tag_budget(manifests)
    return [m for m in manifests if m.applies_to(wanted)], problems


def load_manifest(
    path: Path,
    root: Path,
    on_csv: Callable[[Path], None] | None = None,
    *,
    environments: Collection[str] | None = None,
    environment: str | None = None,
) -> tuple[Manifest | None, list[Problem]]:
    """One manifest and its problems. `environments` are the names bpsync.yaml defines (None:
    not checked); `environment` only decides whether `on_csv` hears of the table."""
    display = display_path(path, root)
    doc, problems = load_yaml(path, display)
    if doc is None:
        return None, problems
    if not isinstance(doc.data, dict):
        return None, [
            Problem(
                display, 1, 1, "a manifest must be a mapping of keys", "see README, 'Manifests'"
            )
        ]
    if on_csv is not None and isinstance(doc.data.get("csv"), str):
        listed = doc.data.get("environments")
        if environment is None or not isinstance(listed, list) or environment in listed:
            on_csv(path.parent / doc.data["csv"])
    fraction = doc.data.get("max_delete_fraction")
    if isinstance(fraction, float) and not math.isfinite(fraction):
        # JSON Schema's minimum/maximum let NaN through; NaN would disable the guard.
        problems.append(
            Problem(
                display,
                *_at(doc, "max_delete_fraction"),
                f"max_delete_fraction is {fraction}",
                "use a number from 0 to 1",
            )
        )
    problems += check_schema(doc, "manifest", display)
    if environments is not None:
        problems += _check_environments(display, doc, environments)
    # Check what can be checked even when other keys are wrong: all problems in one run.
    fields = _fields_of(doc.data.get("fields"))
    if fields is not None:
        problems += _check_fields(display, fields, doc)
    csv = doc.data.get("csv")
    if isinstance(csv, str) and csv:
        problems += _check_csv_path(path.parent / csv, display, doc, root)
    if _has_errors(problems) or fields is None:
        return None, problems
    return _build(path, display, doc.data, root), problems


def _fields_of(raw: Any) -> tuple[Field, ...] | None:
    """The fields, when their structure is sound enough to check their meaning."""
    if not isinstance(raw, list):
        return None
    out = []
    for f in raw:
        if not (
            isinstance(f, dict)
            and isinstance(f.get("title"), str)
            and f.get("type") in (facts.QUERY_TAG, facts.RESULT_TAG)
        ):
            return None
        tag = f.get("tag_name")
        override = f.get("override_existing")
        out.append(
            Field(
                f["title"],
                f["type"],
                tag if isinstance(tag, str) else None,
                override if isinstance(override, bool) else None,
            )
        )
    return tuple(out)


def _has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _build(path: Path, display: str, data: dict[str, Any], root: Path) -> Manifest:
    csv_path = path.parent / data["csv"]
    return Manifest(
        name=data.get("name") or path.stem,
        path=path,
        display=display,
        map_name=data["map_name"],
        description=data.get("description"),
        active=data.get("active", True),
        when=data.get("when"),
        csv_path=csv_path,
        csv_display=display_path(csv_path, root),
        enrichment_id=data.get("enrichment_id"),
        max_delete_fraction=float(data.get("max_delete_fraction", DEFAULT_MAX_DELETE_FRACTION)),
        fields=_fields_of(data["fields"]) or (),
        environments=tuple(data["environments"]) if "environments" in data else None,
    )


def _check_environments(display: str, doc: LoadedYaml, defined: Collection[str]) -> list[Problem]:
    """Every name in the manifest's `environments:` must be one bpsync.yaml defines: a typo
    would silently drop the table from that environment (and plan its deletion there)."""
    listed = doc.data.get("environments")
    if not isinstance(listed, list):
        return []
    if not defined:
        return [
            Problem(
                display,
                *_key_at(doc, "environments"),
                "`environments:` is set, but bpsync.yaml defines no environments",
                "remove the key, or declare the environments in bpsync.yaml",
            )
        ]
    out = []
    known = sorted(defined)
    for i, name in enumerate(listed):
        if not isinstance(name, str) or not ENVIRONMENT_NAME.fullmatch(name) or name in defined:
            continue  # a malformed name is the schema's to report
        import difflib  # only for hints: not loaded on the way to a valid run

        close = difflib.get_close_matches(name, known, n=1)
        mean = f"did you mean {close[0]!r}? " if close else ""
        out.append(
            Problem(
                display,
                *_at(doc, "environments", i),
                f"unknown environment {name!r}",
                f"{mean}environments in bpsync.yaml: {', '.join(defined)}",
            )
        )
    return out


def _key_at(doc: LoadedYaml, *path: str | int) -> tuple[int | None, int | None]:
    line, col = doc.key_marks.get(tuple(path), (None, None))
    return line, col


def _at(doc: LoadedYaml, *path: str | int) -> tuple[int | None, int | None]:
    line, col = doc.marks.get(tuple(path), (None, None))
    return line, col


def _check_fields(display: str, fields: tuple[Field, ...], doc: LoadedYaml) -> list[Problem]:
    out: list[Problem] = []
    if not any(f.is_key for f in fields):
        out.append(
            Problem(
                display,
                *_at(doc, "fields"),
                "no field is a query_tag",
                "mark the column(s) that identify a row as `type: query_tag`",
            )
        )
    if all(f.is_key for f in fields):
        out.append(
            Problem(
                display,
                *_at(doc, "fields"),
                "no field is a result_tag",
                "add at least one `type: result_tag` field",
            )
        )
    titles: dict[str, int] = {}
    targets: dict[str, int] = {}
    for i, f in enumerate(fields):
        line, col = _at(doc, "fields", i)
        if f.title in titles:
            out.append(
                Problem(
                    display,
                    line,
                    col,
                    f"title {f.title!r} is used twice (first in field {titles[f.title] + 1})",
                    "rename one of them",
                )
            )
        titles.setdefault(f.title, i)
        if f.is_key:
            continue
        where = _at(doc, "fields", i, "tag_name") if f.tag_name else _at(doc, "fields", i, "title")
        if f.target_tag in targets:
            out.append(
                Problem(
                    display,
                    *where,
                    f"result tag {f.target_tag!r} is targeted twice in this manifest "
                    f"(also by field {targets[f.target_tag] + 1})",
                    "give one of them another tag_name",
                )
            )
        targets.setdefault(f.target_tag, i)
        out += _check_tag_name(display, f, where)
    return out


def _check_tag_name(display: str, f: Field, where: tuple[int | None, int | None]) -> list[Problem]:
    reason = facts.tag_name_problem(f.target_tag)
    if reason is not None:
        hint = (
            f"set `tag_name:` to a valid name (e.g. {_suggest_tag(f.target_tag)!r})"
            if f.tag_name is None
            else "rename it"
        )
        return [Problem(display, *where, reason, hint)]
    if f.target_tag in facts.DISCOURAGED_TAG_NAMES:
        return [
            Problem(
                display,
                *where,
                f"tag name {f.target_tag!r} is used by BigPanda itself and may have "
                "limited functionality",
                f"prefer another name, e.g. 'short_{f.target_tag}'",
                "warning",
            )
        ]
    return []


def _suggest_tag(title: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9_-]+", "_", title.lower()).strip("_") or "tag"
    if not name[0].isalpha():
        name = "t_" + name
    return name[: facts.TAG_NAME_MAX]


def _check_csv_path(csv_path: Path, display: str, doc: LoadedYaml, root: Path) -> list[Problem]:
    line, col = _at(doc, "csv")
    if not csv_path.resolve().is_relative_to(root.resolve()):
        return [
            Problem(
                display,
                line,
                col,
                f"csv {doc.data.get('csv')} resolves outside the repository",
                "keep tables inside the repository (no absolute paths, "
                "`..` or symlinks leading out)",
            )
        ]
    try:
        exists = csv_path.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows (is_file raises)
        return [
            Problem(
                display,
                line,
                col,
                f"csv path {doc.data.get('csv')!r} cannot be used: {e.strerror or e}",
                "fix the `csv:` path (relative to the manifest)",
            )
        ]
    if not exists:
        return [
            Problem(
                display,
                line,
                col,
                f"csv file {display_path(csv_path, root)} does not exist",
                "create it, or fix the `csv:` path (relative to the manifest)",
            )
        ]
    return []


def _check_names(manifests: list[Manifest]) -> list[Problem]:
    out = []
    seen: dict[str, Manifest] = {}
    for m in manifests:
        if m.name in seen:
            out.append(
                Problem(
                    m.display,
                    None,
                    None,
                    f"table name {m.name!r} is also used by {seen[m.name].display}",
                    "give each manifest a unique `name:`",
                )
            )
        seen.setdefault(m.name, m)
    return out


def _check_result_tag_budget(manifests: list[Manifest]) -> list[Problem]:
    tags = {f.target_tag for m in manifests for f in m.fields if not f.is_key}
    if len(tags) <= facts.MAX_MAPPING_RESULT_TAGS:
        return []
    return [
        Problem(
            "(all manifests)",
            None,
            None,
            f"{len(tags)} distinct result tags; BigPanda allows "
            f"{facts.MAX_MAPPING_RESULT_TAGS} mapping result tags per organisation",
            "reuse existing tags via tag_name, or drop columns",
        )
    ]
