"""Load a YAML file and check it against a JSON Schema, with line and column for every error.

PyYAML's composer gives us nodes with positions; we build plain data from them ourselves,
so we can reject duplicate keys (PyYAML silently keeps the last) and cap alias expansion
(a "billion laughs" file must not exhaust memory). Schema errors are mapped back to the
node of the offending key or value, and YAML 1.1 surprises (`NO`, `on`, `0700`, `1.10`
read as booleans or numbers) are explained with "quote it".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bpsync.errors import Problem
from bpsync.quickschema import surely_valid

MAX_YAML_BYTES = 1_000_000  # a manifest is a few hundred bytes; refuse absurd files early
MAX_NODES = 100_000  # bounds alias expansion ("billion laughs")

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedYaml:
    """Plain data plus where each part of it came from."""

    data: Any
    marks: dict[JsonPath, tuple[int, int]]  # path -> (line, col) of the value, 1-based
    key_marks: dict[JsonPath, tuple[int, int]]  # path -> (line, col) of the mapping key
    plain_scalars: frozenset[JsonPath]  # values written without quotes


class _TooBig(Exception):
    pass


class _BadValue(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Builder:
    def __init__(self, display: str, problems: list[Problem]) -> None:
        self.display = display
        self.problems = problems
        self.marks: dict[JsonPath, tuple[int, int]] = {}
        self.key_marks: dict[JsonPath, tuple[int, int]] = {}
        self.plain: set[JsonPath] = set()
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.style is None:
            self.plain.add(path)
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, IndexError, TypeError):
            # PyYAML's own constructors fail on e.g. `!!float ""` with an IndexError.
            raise _BadValue(
                Problem(
                    self.display,
                    node.start_mark.line + 1,
                    node.start_mark.column + 1,
                    f"invalid value {node.value!r} for its tag {node.tag}",
                    "remove the `!!` tag, or fix the value",
                )
            ) from None

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, "a mapping key must be a plain name", "")
                continue
            key = str(self.constructor.construct_object(key_node))
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key in out:
                first = self.key_marks[(*path, key)]
                self._problem(
                    key_node,
                    f"duplicate key {key!r} (first at line {first[0]})",
                    "remove one of them",
                )
                continue
            self.key_marks[(*path, key)] = (line, col)
            out[key] = self.build(value_node, (*path, key))
        return out

    def _problem(self, node: yaml.Node, message: str, hint: str) -> None:
        self.problems.append(
            Problem(
                self.display, node.start_mark.line + 1, node.start_mark.column + 1, message, hint
            )
        )


def load_yaml(path: Path, display: str) -> tuple[LoadedYaml | None, list[Problem]]:
    """Parse `path`; on failure return None and the problems (never raises for bad input)."""
    problems: list[Problem] = []
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            return None, [
                Problem(
                    display,
                    None,
                    None,
                    f"file is {size:,} bytes; a bpsync YAML file is at most {MAX_YAML_BYTES:,}",
                    "is this the right file?",
                )
            ]
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [
            Problem(
                display, None, None, f"not UTF-8 (byte offset {e.start})", "save the file as UTF-8"
            )
        ]
    except OSError as e:
        return None, [Problem(display, None, None, f"cannot read: {e.strerror}", "")]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return None, [
            Problem(
                display, line, col, f"invalid YAML: {e.problem or e.context}", "fix the YAML syntax"
            )
        ]
    except (yaml.YAMLError, RecursionError) as e:
        return None, [
            Problem(display, None, None, f"invalid YAML: {type(e).__name__}", "fix the YAML syntax")
        ]
    if node is None:
        return LoadedYaml({}, {(): (1, 1)}, {}, frozenset()), []
    builder = _Builder(display, problems)
    try:
        data = builder.build(node, ())
    except _TooBig:
        return None, [
            Problem(
                display,
                None,
                None,
                f"more than {MAX_NODES:,} YAML nodes (alias expansion?)",
                "write the file out plainly, without anchors and aliases",
            )
        ]
    except _BadValue as e:
        return None, [e.problem]
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        return None, [Problem(display, None, None, f"invalid YAML value: {e}", "")]
    return LoadedYaml(data, builder.marks, builder.key_marks, frozenset(builder.plain)), problems


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped inside the package (`bpsync/schemas/<name>.schema.json`)."""
    # Shipped inside the package (a copy of the repository's schemas/, kept equal by a test).
    text = (Path(__file__).parent / "schemas" / f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


_YAML11_NAMES = {bool: "a boolean", int: "a number", float: "a number", type(None): "null"}


def check_schema(doc: LoadedYaml, schema_name: str, display: str) -> list[Problem]:
    """Problems of `doc` against the named schema, one per error, located."""
    schema = load_schema(schema_name)
    if surely_valid(doc.data, schema):
        return []  # jsonschema would find nothing either; it costs more than the rest
    from jsonschema import Draft202012Validator  # heavy import, only when needed

    validator = Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(doc.data), key=lambda e: list(map(str, e.path))):
        problems.extend(_explain(err, doc, display))
    return sorted(set(problems), key=lambda p: (p.line or 0, p.col or 0, p.message))


def _locate(doc: LoadedYaml, path: JsonPath, key: bool = False) -> tuple[int | None, int | None]:
    marks = doc.key_marks if key else doc.marks
    while path and path not in marks:
        path = path[:-1]
    line, col = marks.get(path, doc.marks.get((), (1, 1)))
    return line, col


def _where(path: JsonPath) -> str:
    return ".".join(str(p) for p in path) or "the document"


def _explain(err: Any, doc: LoadedYaml, display: str) -> list[Problem]:
    path: JsonPath = tuple(err.absolute_path)
    line, col = _locate(doc, path)
    if "propertyNames" in err.absolute_schema_path and isinstance(err.instance, str):
        # The error is about a key (e.g. an environment name): point at the key itself.
        kline, kcol = _locate(doc, (*path, err.instance), key=True)
        names = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
        return [
            Problem(display, kline, kcol, f"invalid name {err.instance!r} in {_where(path)}", names)
        ]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(err.schema.get("properties", {}))
        out = []
        for key in err.instance:
            if key in known:
                continue
            kline, kcol = _locate(doc, (*path, key), key=True)
            import difflib  # only for hints: not loaded on the way to a valid run

            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            out.append(
                Problem(display, kline, kcol, f"unknown key {key!r} in {_where(path)}", hint)
            )
        return out
    if err.validator == "type" and path in doc.plain_scalars and "string" in _types(err):
        value = err.instance
        kind = _YAML11_NAMES.get(type(value), type(value).__name__)
        return [
            Problem(
                display,
                line,
                col,
                f"{_where(path)}: the unquoted value was read as {kind} ({value!r}), "
                "but text is expected",
                'quote it, e.g. "…"',
            )
        ]
    if err.validator == "enum" and path in doc.plain_scalars and not isinstance(err.instance, str):
        kind = _YAML11_NAMES.get(type(err.instance), type(err.instance).__name__)
        allowed = ", ".join(map(str, err.validator_value))
        return [
            Problem(
                display,
                line,
                col,
                f"{_where(path)}: the unquoted value was read as {kind} "
                f"({err.instance!r}); allowed: {allowed}",
                'quote it, e.g. "…"',
            )
        ]
    if err.validator == "required":
        return [Problem(display, line, col, f"{_where(path)}: {err.message}", "add the key")]
    message = err.message
    if len(message) > 200:
        message = message[:200] + "…"
    return [
        Problem(
            display,
            line,
            col,
            f"{_where(path)}: {message}",
            err.schema.get("description", "") if isinstance(err.schema, dict) else "",
        )
    ]


def _types(err: Any) -> list[str]:
    t = err.validator_value
    return [t] if isinstance(t, str) else list(t)
