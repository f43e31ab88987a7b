"""A quick, conservative JSON Schema check: "surely valid" or "not sure", never "invalid".

Importing jsonschema costs more than the rest of `bpsync plan`'s start-up, and nearly every
bpsync.yaml and manifest is valid. `surely_valid` covers the subset of draft 2020-12 that
bpsync's own schemas use, with jsonschema's semantics (`pattern` is `re.search`; a bool is
not a number). It says True only when it is certain that jsonschema would find no error;
anything else (an unknown keyword, a `$ref` it cannot follow, a value whose type JSON does
not have, a comparison it is not certain of, such as a bool against a number or a
non-finite float) is "not sure", and the caller asks jsonschema, which also explains errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

# Keywords that never make a document invalid.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)
_MAX_DEPTH = 64  # deeper than any of our schemas: a `$ref` loop is "not sure"


def surely_valid(instance: Any, schema: Any) -> bool:
    """True only if `instance` is certainly valid against `schema` (draft 2020-12)."""
    return _Checker(schema).check(instance, schema, 0)


def _json_type(value: Any) -> str | None:
    """The JSON type of a plain value; None for anything JSON does not have."""
    kind = type(value)
    if kind is bool:
        return "boolean"
    if kind is int:
        return "integer"
    if kind is float:
        return "number" if math.isfinite(value) else None
    return _PLAIN.get(kind)


_PLAIN: dict[type, str] = {str: "string", list: "array", dict: "object", type(None): "null"}
_TYPES = frozenset({"string", "array", "object", "null", "boolean", "integer", "number"})


def _has_type(value: Any, name: str) -> bool:
    kind = _json_type(value)
    if name == "number":
        return kind in ("integer", "number")
    if name == "integer":
        return kind == "integer" or (kind == "number" and float(value).is_integer())
    return kind == name


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, said only where no bool/number or container doubt arises."""
    kind = type(a)
    return kind is type(b) and kind in (str, bool, int, type(None)) and a == b


class _Checker:
    def __init__(self, root: Any) -> None:
        self.root = root

    def check(self, instance: Any, schema: Any, depth: int) -> bool:
        if schema is True:
            return True
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return False
        if "$id" in schema and schema is not self.root:
            return False  # a new base for `$ref`: not followed here
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS:
                continue
            rule = _RULES.get(keyword)
            if rule is None or not rule(self, instance, value, schema, depth):
                return False
        return True

    def ref(self, instance: Any, ref: Any, depth: int) -> bool:
        prefix = "#/$defs/"
        if not isinstance(ref, str) or not ref.startswith(prefix):
            return False
        defs = self.root.get("$defs") if isinstance(self.root, dict) else None
        name = ref[len(prefix) :]
        if not isinstance(defs, dict) or name not in defs or any(c in name for c in "/~%"):
            return False
        return self.check(instance, defs[name], depth + 1)


Rule = Callable[[_Checker, Any, Any, dict[str, Any], int], bool]


def _type(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n in _TYPES for n in names):
        return False
    return _json_type(instance) is not None and any(_has_type(instance, n) for n in names)


def _enum(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    return isinstance(value, list) and any(_same(instance, v) for v in value)


def _const(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    return _same(instance, value)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _minimum(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not _number(value) or type(instance) is bool:
        return False
    if not _has_type(instance, "number"):
        return _json_type(instance) is not None  # the keyword ignores non-numbers
    return bool(instance >= value)


def _maximum(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not _number(value) or type(instance) is bool:
        return False
    if not _has_type(instance, "number"):
        return _json_type(instance) is not None
    return bool(instance <= value)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _min_length(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not _count(value):
        return False
    return not isinstance(instance, str) or len(instance) >= value


def _min_items(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not _count(value):
        return False
    return not isinstance(instance, list) or len(instance) >= value


def _pattern(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not isinstance(value, str):
        return False
    try:
        compiled = _compiled(value)
    except re.error:
        return False
    return not isinstance(instance, str) or compiled.search(instance) is not None


def _unique(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if type(value) is not bool:
        return False
    if not value or not isinstance(instance, list) or len(instance) < 2:
        return True
    # Strings alone: JSON equality is Python's. Mixes (1, 1.0, True) are not ours to judge.
    return all(type(v) is str for v in instance) and len(set(instance)) == len(instance)


def _required(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        return False
    return not isinstance(instance, dict) or all(k in instance for k in value)


def _items(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if "prefixItems" in schema or not isinstance(value, dict | bool):
        return False
    if not isinstance(instance, list):
        return True
    return all(c.check(item, value, depth + 1) for item in instance)


def _properties(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not isinstance(value, dict):
        return False
    if not isinstance(instance, dict):
        return True
    return all(c.check(instance[k], s, depth + 1) for k, s in value.items() if k in instance)


def _additional(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    known = schema.get("properties", {})
    if "patternProperties" in schema or not isinstance(known, dict):
        return False
    if not isinstance(instance, dict):
        return True
    extras = [v for k, v in instance.items() if k not in known]
    return all(c.check(v, value, depth + 1) for v in extras)


def _names(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    if not isinstance(instance, dict):
        return True
    return all(type(k) is str and c.check(k, value, depth + 1) for k in instance)


def _ref(c: _Checker, instance: Any, value: Any, schema: dict[str, Any], depth: int) -> bool:
    return c.ref(instance, value, depth)


_RULES: dict[str, Rule] = {
    "$ref": _ref,
    "additionalProperties": _additional,
    "const": _const,
    "enum": _enum,
    "items": _items,
    "maximum": _maximum,
    "minimum": _minimum,
    "minItems": _min_items,
    "minLength": _min_length,
    "pattern": _pattern,
    "properties": _properties,
    "propertyNames": _names,
    "required": _required,
    "type": _type,
    "uniqueItems": _unique,
}
