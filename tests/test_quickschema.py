"""The quick schema check (`bpsync.quickschema`): when it says "surely valid", jsonschema
agrees (property tests over our schemas and over random schemas of the same subset); the
project's own files take the fast path; and `plan` then never imports jsonschema, while an
invalid file still gets jsonschema's located message."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import DEFAULT_CONFIG, OWNERS_HEADER, make_repo, manifest_yaml, one_problem, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from bpsync.quickschema import surely_valid
from bpsync.yamlfile import check_schema, load_schema, load_yaml

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values that go where they should not: bools where numbers go, 1.0 for 1, non-finite floats,
# a date (YAML reads `2024-01-01` as one), near-miss enum values, duplicates, empties.
ODD: list[Any] = [
    True,
    False,
    0,
    1,
    1.0,
    -1,
    2,
    0.5,
    -0.0,
    1.5,
    float("nan"),
    float("inf"),
    10**30,
    "",
    "x",
    "v1",
    "V1",
    "query_tag ",
    "local",
    "prod",
    "-prod",
    "a\n",
    "é",
    None,
    [],
    {},
    ["a", "a"],
    [1, True],
    [0, False],
    [1, 1.0],
    {"a": 1},
    datetime.date(2024, 1, 1),
]
KEYS = ["bogus", "stat", "regin", "colums", "fields", "api", "csv"]
NAMES = st.sampled_from(
    ["api", "state", "prod", "sandbox", "-x", "a" * 64, "a" * 63, "x y", "ok_1", "", "é", "0"]
)


def _valid_text(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=8)


def _valid_number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum", -5), schema.get("maximum", 10**6)
    whole = st.integers(low, high)
    if integer:
        return whole | whole.map(float)  # 3.0 is an integer too
    return whole | st.floats(low, high)


def _valid_typed(name: str, schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    if name == "object":
        return _valid_object(schema, root)
    if name == "array":
        item = valid(schema.get("items", {"type": "string"}), root)
        low = schema.get("minItems", 0)
        return st.lists(item, min_size=low, max_size=4, unique=schema.get("uniqueItems", False))
    if name == "string":
        return _valid_text(schema)
    if name in ("number", "integer"):
        return _valid_number(schema, name == "integer")
    return st.booleans() if name == "boolean" else st.none()


def _valid_object(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    extra = schema.get("additionalProperties", True)
    named = schema.get("propertyNames", {})
    keys = _valid_text(named) if "propertyNames" in schema else st.sampled_from(["x", "y"])
    more = st.dictionaries(keys, valid(extra, root), max_size=3) if extra is not False else None
    fixed = st.fixed_dictionaries(
        {k: valid(v, root) for k, v in props.items() if k in required},
        optional={k: valid(v, root) for k, v in props.items() if k not in required},
    )
    if more is None:
        return fixed
    return st.tuples(more, fixed).map(lambda pair: {**pair[0], **pair[1]})


def valid(schema: Any, root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid against `schema` by construction (for the subset our schemas use)."""
    if schema is True or schema == {}:
        return st.none() | st.text(max_size=3) | st.integers()
    if "$ref" in schema:
        return valid(root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kinds = schema["type"]
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return st.one_of([_valid_typed(k, schema, root) for k in kinds])


Path_ = tuple[str | int, ...]


def _paths(value: Any, at: Path_ = ()) -> list[Path_]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def _replace(value: Any, path: Path_, new: Callable[[Any], Any]) -> Any:
    if not path:
        return new(value)
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


def _mutations(draw: st.DrawFn, node: Any) -> Any:
    """One change to `node`: another value, an unknown or odd key, a key or item less, a
    duplicate item."""
    choices: list[Callable[[], Any]] = [lambda: draw(st.sampled_from(ODD))]
    if isinstance(node, dict):
        choices.append(lambda: {**node, draw(NAMES | st.sampled_from(KEYS)): draw(LEAF)})
        if node:
            choices.append(
                lambda: {k: v for k, v in node.items() if k != draw(st.sampled_from(list(node)))}
            )
    if isinstance(node, list) and node:
        choices.append(lambda: [*node, draw(st.sampled_from(node))])
        choices.append(lambda: node[1:])
    return draw(st.sampled_from(choices))()


@st.composite
def mutated(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    value = draw(valid(schema, schema))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        value = _replace(value, path, lambda node: _mutations(draw, node))
    return value


def jsonschema_valid(instance: Any, schema: dict[str, Any]) -> bool:
    return not any(Draft202012Validator(schema).iter_errors(instance))


@pytest.mark.parametrize("name", ["manifest", "config"])
def test_valid_documents_are_surely_valid(name: str) -> None:
    schema = load_schema(name)

    @settings(SETTINGS, max_examples=300)
    @given(valid(schema, schema))
    def check(instance: Any) -> None:
        assert jsonschema_valid(instance, schema), instance  # the generator is right
        assert surely_valid(instance, schema), instance  # and the fast path is taken

    check()


@pytest.mark.parametrize("name", ["manifest", "config"])
def test_surely_valid_means_jsonschema_finds_no_error(name: str) -> None:
    schema = load_schema(name)
    said: dict[bool, int] = {True: 0, False: 0}

    @SETTINGS
    @given(mutated(schema))
    def check(instance: Any) -> None:
        quick = surely_valid(instance, schema)
        said[quick] += 1
        if quick:
            assert jsonschema_valid(instance, schema), instance

    check()
    assert said[True] >= 20 and said[False] >= 500, said  # both answers were exercised


# Random schemas of the same subset, so every keyword meets every kind of value.
LEAF: st.SearchStrategy[Any] = (
    st.sampled_from(ODD) | st.text(max_size=3) | st.integers(-3, 3) | st.floats(-3, 3)
)


def _keywords(sub: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    types = st.sampled_from(["object", "array", "string", "number", "integer", "boolean", "null"])
    number = st.integers(-2, 2) | st.floats(-2, 2) | st.sampled_from([True, 1.0, float("nan")])
    options = {
        "type": types | st.lists(types, min_size=1, max_size=3),
        "enum": st.lists(LEAF, min_size=1, max_size=4),
        "const": LEAF,
        "minimum": number,
        "maximum": number,
        "minLength": st.integers(0, 3),
        "minItems": st.integers(0, 3),
        "pattern": st.sampled_from(["^a", "b$", "^[a-z]{0,2}$", "."]),
        "uniqueItems": st.booleans(),
        "required": st.lists(st.sampled_from(["a", "b"]), max_size=2),
        "items": sub,
        "properties": st.dictionaries(st.sampled_from(["a", "b"]), sub, max_size=2),
        "additionalProperties": sub,
        "propertyNames": sub,
        "$ref": st.just("#/$defs/d"),
        "description": st.text(max_size=3),
    }
    chosen = st.lists(st.sampled_from(sorted(options)), unique=True, max_size=3)
    return chosen.flatmap(lambda keys: st.fixed_dictionaries({k: options[k] for k in keys}))


SCHEMAS = st.recursive(st.booleans() | _keywords(st.just(True)), _keywords, max_leaves=6).map(
    lambda s: {**s, "$defs": {"d": {"type": "string"}}} if isinstance(s, dict) else s
)
VALUES = LEAF | st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(SETTINGS, max_examples=2000)
@given(SCHEMAS, VALUES)
def test_surely_valid_agrees_with_jsonschema_on_random_schemas(schema: Any, value: Any) -> None:
    if surely_valid(value, schema):
        assert not any(Draft202012Validator(schema).iter_errors(value)), (schema, value)


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"enum": [1]}, True),
        ({"enum": [True]}, 1),
        ({"enum": [1]}, 1.0),  # equal for JSON Schema, but not said
        ({"const": 0}, False),
        ({"uniqueItems": True}, [1, True]),
        ({"uniqueItems": True}, [1, 1.0]),
        ({"type": "number"}, True),
        ({"type": "integer"}, False),
        ({"type": "integer"}, 0.5),
        ({"minimum": 0}, True),
        ({"maximum": 1}, float("nan")),
        ({"type": "string"}, datetime.date(2024, 1, 1)),
        ({"format": "date"}, "x"),  # an unknown keyword
        ({"$ref": "#/$defs/missing"}, "x"),
        ({"additionalProperties": False}, {"a": 1}),
        ({"propertyNames": {"pattern": "^p"}}, {"prod": 1, "x": 1}),
        ({"required": ["a"]}, {"b": 1}),
        ({"minItems": 2}, ["a"]),
        (False, None),
    ],
)
def test_doubtful_cases_are_not_sure(schema: Any, value: Any) -> None:
    assert not surely_valid(value, schema)


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "integer"}, 1.0),
        ({"type": ["string", "null"], "minLength": 1}, None),
        ({"minimum": 0, "maximum": 1}, 1),
        ({"pattern": "^a$"}, "a\n"),  # re.search, like jsonschema
        ({"uniqueItems": True, "items": {"type": "string"}}, ["a", "b"]),
        ({"propertyNames": {"pattern": "^p"}}, {"prod": None}),
    ],
)
def test_clear_cases_are_surely_valid(schema: Any, value: Any) -> None:
    assert surely_valid(value, schema)
    assert jsonschema_valid(value, schema)


README_CONFIG = """\
api:
  version: v2.1
manifests: ["tables/**/*.yaml"]
environments:
  sandbox:
    api: {token_env: BIGPANDA_SANDBOX_TOKEN}
  prod:
    api: {region: eu, token_env: BIGPANDA_PROD_TOKEN}
    state: {backend: s3, bucket: acme-bpsync, prefix: bigpanda}
  emulator:
    api: {base_url: "http://127.0.0.1:8471", token_env: BIGPANDA_TOKEN}
  staging:
refresh: {max_rows: 10000}
"""


def _fast(path: Path, name: str) -> bool:
    doc, problems = load_yaml(path, path.name)
    assert doc is not None and not problems
    return surely_valid(doc.data, load_schema(name))


@pytest.mark.parametrize("path", sorted((ROOT / "tables").glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_manifests_take_the_fast_path(path: Path) -> None:
    assert _fast(path, "manifest")


def test_typical_configs_take_the_fast_path(tmp_path: Path) -> None:
    (tmp_path / "bpsync.yaml").write_text(README_CONFIG)
    assert _fast(tmp_path / "bpsync.yaml", "config")
    assert _fast(ROOT / "bpsync.yaml", "config")


def test_a_manifest_with_environments_takes_the_fast_path(tmp_path: Path) -> None:
    text = manifest_yaml("o.csv", extra="environments: [sandbox, prod]\nmax_delete_fraction: 1\n")
    (tmp_path / "m.yaml").write_text(text)
    assert _fast(tmp_path / "m.yaml", "manifest")


PLAN = ["--env", "sandbox", "plan", "--no-refresh"]


# Not needed by `plan --no-refresh` of a valid project: hints and schema errors, BigPanda,
# locks and state writes (uuid, socket, subprocess), spilling huge diffs (pickle, tempfile).
NOT_NEEDED = ["jsonschema", "difflib", "deepdiff", "httpx", "bpsync.refresh", "bpsync.validate"]
NOT_NEEDED += ["uuid", "socket", "subprocess", "pickle", "tempfile"]


def _plan_in_fresh_python(root: Path) -> tuple[int, str, set[str]]:
    """(exit code, stderr, which of NOT_NEEDED were imported) of `plan --no-refresh`."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from bpsync.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = run({[*PLAN, '--format', 'json']!r})\n"
        f"print(json.dumps([code, [m for m in {NOT_NEEDED!r} if m in sys.modules]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=60
    )
    code, imported = json.loads(result.stdout.splitlines()[-1])
    return code, result.stderr, set(imported)


def _project(tmp_path: Path, extra: str = "") -> Path:
    config = DEFAULT_CONFIG + "environments:\n  sandbox:\n  prod: {}\n"
    manifest = manifest_yaml("owners.csv", extra="environments: [sandbox]\n" + extra)
    csv = OWNERS_HEADER + "billing,ana,ops\n"
    return make_repo(tmp_path, {"owners": manifest}, {"owners.csv": csv}, config)


def test_plan_of_a_valid_project_does_not_import_jsonschema(tmp_path: Path) -> None:
    root = _project(tmp_path)
    code, err, imported = _plan_in_fresh_python(root)
    assert code == 0, err
    assert imported == set()


def test_an_invalid_manifest_still_gets_the_located_message(tmp_path: Path) -> None:
    root = _project(tmp_path, "descripton: owners\nmax_delete_fraction: true\n")
    code, err, imported = _plan_in_fresh_python(root)
    assert code == 1 and "jsonschema" in imported
    one_problem(err, "tables/owners.yaml:11:1", "unknown key 'descripton'", "'description'")
    one_problem(err, "tables/owners.yaml:12:22", "max_delete_fraction: True is not of type")
    assert err == run_cli(PLAN, root)[2]


def test_check_schema_reports_as_jsonschema_does(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(manifest_yaml("o.csv", extra="environments: [a, a]\n"))
    doc, _ = load_yaml(path, "m.yaml")
    assert doc is not None
    (problem,) = check_schema(doc, "manifest", "m.yaml")
    assert (problem.line, problem.col) == (10, 15)
    assert "has non-unique elements" in problem.message
