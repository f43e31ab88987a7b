"""`bpsync init`: a starter bpsync.yaml, or a manifest for an existing CSV.

Nothing is ever overwritten: each file is written to a temporary name and linked into place,
which fails if the name exists (so two `init`s cannot both win, and a crash leaves no half
file). A manifest is written only for a table that passes every rule `validate` checks (the
same located problems), so it validates as written. The `# yaml-language-server: $schema=…`
line points at the project's `schemas/` copy of the JSON Schemas (written when missing, from
the installed bpsync), so editors validate offline against the schema of the installed version.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bpsync.bigpanda import facts
from bpsync.errors import ConfigError, InvalidInput, Problem, UsageError, display_path
from bpsync.table import GZIP_SUFFIX, ProblemSink, TableLayout, TableScan, table_bytes

SCHEMA_DIR = "schemas"
CONFIG_FILE = "bpsync.yaml"

STARTER_CONFIG = """\
# yaml-language-server: $schema={schema}
# bpsync project configuration. Every key is optional; these are the defaults.
api:
  version: v1                # v1: the documented upload API, with an Org Token
                             # v2.1: /resources/v2.1/mapping-enrichment, with a User API Key
  region: us                 # us or eu (BIGPANDA_API_URL overrides it)
  token_env: BIGPANDA_TOKEN  # the environment variable that holds the token
manifests: ["tables/**/*.yaml"]
state:
  backend: local             # local: .bpsync/, committed with the repository
  path: .bpsync              # s3: a shared bucket, for big tables and many runners (README)
"""

# A title YAML reads back as the same string without quotes (no keyword, number or symbol).
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./()-]*(?: [A-Za-z0-9_./()-]+)*")
_YAML_WORDS = frozenset(
    ["y", "n", "yes", "no", "true", "false", "on", "off", "null", "~"]  # YAML 1.1 booleans and null
)


@dataclass(frozen=True)
class Written:
    """A file init wrote, for the command to report."""

    path: Path
    what: str


def _packaged_schema(name: str) -> bytes:
    return (Path(__file__).parent / "schemas" / f"{name}.schema.json").read_bytes()


def create_new(path: Path, data: bytes) -> None:
    """Write `path` whole, atomically, only if it does not exist (FileExistsError if it does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.link(tmp, path)  # fails if `path` exists: never overwrite, even in a race
    finally:
        Path(tmp).unlink(missing_ok=True)


def _schema_ref(root: Path, name: str, beside: Path, written: list[Written]) -> str:
    """The relative path from a file in `beside` to the project's copy of a schema, written
    from the installed package when the project has none."""
    target = root / SCHEMA_DIR / f"{name}.schema.json"
    if not target.exists():
        try:
            create_new(target, _packaged_schema(name))
            of = {"config": "bpsync.yaml", "manifest": "manifests"}.get(name, name)
            written.append(Written(target, f"the JSON Schema of {of}, for editors"))
        except FileExistsError:
            pass
    return Path(os.path.relpath(target, beside)).as_posix()


def init_project(root: Path) -> list[Written]:
    """Write a starter bpsync.yaml in `root` (and the schemas editors read)."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory", hint="check the -C option")
    path = root / CONFIG_FILE
    if path.exists():
        raise ConfigError(
            f"{path} already exists; nothing was written",
            hint="edit it, or delete it first to start over",
        )
    written: list[Written] = []
    schema = _schema_ref(root, "config", root, written)
    try:
        create_new(path, STARTER_CONFIG.format(schema=schema).encode())
    except FileExistsError:
        raise ConfigError(f"{path} already exists; nothing was written") from None
    _schema_ref(root, "manifest", root, written)
    return [Written(path, "the project configuration"), *written]


# -- a manifest for an existing CSV --------------------------------------------------------


def table_stem(csv: Path) -> str:
    """`owners` for owners.csv and owners.csv.gz."""
    name = csv.name.removesuffix(GZIP_SUFFIX)
    return name.rsplit(".", 1)[0] if "." in name else name


def suggest_tag_name(title: str, taken: set[str]) -> str:
    """A valid, unreserved tag name for `title`, not in `taken`: `Runbook URL` → runbook_url."""
    name = re.sub(r"[^a-z0-9_-]+", "_", title.lower()).strip("_-") or "tag"
    if not name[0].isalpha():
        name = f"t_{name}"
    name = name[: facts.TAG_NAME_MAX]
    if name in facts.RESERVED_TAG_NAMES:
        name = f"{name}_tag"
    candidate, n = name, 2
    while candidate in taken:
        suffix = f"_{n}"
        candidate, n = name[: facts.TAG_NAME_MAX - len(suffix)] + suffix, n + 1
    return candidate


def _yaml_str(text: str) -> str:
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def _peek_header(path: Path) -> list[str] | None:
    """The header titles, when the first line can be read at all; the full scan below reports
    why not in validate's words (empty file, LFS pointer, not gzip, bad UTF-8…)."""
    import csv

    head = b""
    try:
        for chunk in table_bytes(path):
            head += chunk
            if b"\n" in head or len(head) > 1 << 22:
                break
    except (OSError, EOFError, ValueError):
        return None
    first = head.split(b"\n", 1)[0].removesuffix(b"\r").removeprefix(b"\xef\xbb\xbf")
    try:
        return next(csv.reader([first.decode("utf-8")], strict=True), None)
    except (UnicodeDecodeError, csv.Error):
        return None


def _check_columns(
    titles: Sequence[str], keys: Sequence[str], display: str, csv_name: str
) -> list[Problem]:
    problems = [
        Problem(display, 1, col, f"column {col} has no title", "give every column a title")
        for col, title in enumerate(titles, 1)
        if not title
    ]
    for key in keys:
        if key not in titles:
            problems.append(
                Problem(
                    display,
                    1,
                    None,
                    f"--key {key!r} is not a column of {csv_name}",
                    f"its columns are: {', '.join(titles)}",
                )
            )
    distinct = set(titles)
    if not problems and len(distinct) <= len(set(keys or titles[:1])):
        problems.append(
            Problem(
                display,
                1,
                None,
                "every column is a key; BigPanda needs at least one result column",
                "choose fewer --key columns, or add a column to enrich alerts with",
            )
        )
    return problems


def manifest_text(
    name: str, csv_name: str, titles: Sequence[str], keys: Sequence[str], schema: str
) -> str:
    lines = [
        f"# yaml-language-server: $schema={schema}",
        f"# Written by `bpsync init --from {csv_name}`: the key column(s) identify a row",
        "# (query_tag); the other columns are the tags an alert is enriched with (result_tag).",
        f"name: {_yaml_str(name)}",
        f"map_name: {_yaml_str(name)}",
        f"csv: {_yaml_str(csv_name)}",
        "fields:",
    ]
    # Titles that already are valid tag names keep their name; suggestions avoid them.
    results = [t for t in titles if t not in keys]
    taken = {t for t in results if facts.tag_name_problem(t) is None}
    for title in titles:
        lines.append(f"  - title: {_yaml_str(title)}")
        if title in keys:
            lines.append("    type: query_tag")
            continue
        lines.append("    type: result_tag")
        if facts.tag_name_problem(title) is not None:
            tag = suggest_tag_name(title, taken)
            taken.add(tag)
            lines.append(f"    tag_name: {tag}  # the title is not a valid BigPanda tag name")
    return "\n".join(lines) + "\n"


def init_manifest(
    root: Path, csv_path: Path, keys: Sequence[str], name: str | None
) -> tuple[list[Written], list[Problem]]:
    """Write the manifest of the existing table `csv_path` beside it: the first column (or
    `keys`) as the key, every other column a result tag. Returns what was written and the
    table's warnings; an invalid table raises InvalidInput with validate's problems."""
    display = display_path(csv_path, root)
    if not csv_path.is_file():
        raise UsageError(f"{display} does not exist (or is not a file)", hint="check the path")
    if not csv_path.resolve().is_relative_to(root.resolve()):
        raise UsageError(
            f"{display} is outside the project ({root})",
            hint="move the table into the repository (e.g. tables/), or run with -C",
        )
    name = name or table_stem(csv_path)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise UsageError(
            f"invalid table name {name!r}",
            hint="use letters, digits, - _ . (e.g. --name service-owners)",
        )
    path = csv_path.parent / f"{name}.yaml"
    if path.exists():
        raise ConfigError(
            f"{display_path(path, root)} already exists; nothing was written",
            hint="edit that manifest, or pass --name to write another one",
        )
    titles = _peek_header(csv_path)
    keys = list(dict.fromkeys(keys))
    sink = ProblemSink(display)
    if titles is None or not titles:
        TableScan(csv_path, TableLayout(("?",), (0,)), sink).run()
        raise InvalidInput(
            sink.finish()
            or [Problem(display, 1, None, "no header row could be read", "add the header row")]
        )
    problems = _check_columns(titles, keys, display, csv_path.name)
    if problems:
        raise InvalidInput(problems)
    keys = keys or [titles[0]]
    distinct = tuple(dict.fromkeys(titles))
    layout = TableLayout(distinct, tuple(distinct.index(k) for k in keys))
    TableScan(csv_path, layout, sink).run()  # duplicate titles, BOM, no rows…: as validate
    found = sink.finish()
    if sink.errors:
        raise InvalidInput(found)
    written: list[Written] = []
    schema = _schema_ref(root, "manifest", path.parent, written)
    text = manifest_text(name, csv_path.name, distinct, keys, schema)
    try:
        create_new(path, text.encode("utf-8"))
    except FileExistsError:
        raise ConfigError(
            f"{display_path(path, root)} already exists; nothing was written"
        ) from None
    return [Written(path, f"the manifest of {display}"), *written], found
