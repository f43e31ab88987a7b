"""Machine-readable results: `validate --format json` and `apply --format json`.

Both are versioned like the plan JSON (format_version "1": keys may be added, none may change
meaning without a new version) and described by JSON Schemas in schemas/
(validate-result.schema.json, apply-result.schema.json).

validate: format_version, valid, summary {manifests, tables, rows, errors, warnings},
problems[] each {file, line, column, severity, message, hint} (line and column null where a
problem has none; `errors`/`warnings` count every problem found, `problems` holds those shown,
at most 50 errors per file, then one "… and N more" problem).

apply: format_version, outcome ("applied", "no-changes", "failed" or "error"), error (null, or
why the apply stopped before or between tables), fingerprint (of the plan applied; null when
none was made), summary {tables, succeeded, failed, rows_added, rows_changed, rows_removed},
tables[] each {name, action, enrichment_id, job_id, rows {added, changed, removed},
duration_seconds, outcome ("applied", "failed", "unchanged" or "resumed"), error, message}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from bpsync.errors import Problem

if TYPE_CHECKING:
    from bpsync.applier import TableResult
    from bpsync.plan import Plan

FORMAT_VERSION = "1"


def problem_record(p: Problem) -> dict[str, Any]:
    return {
        "file": p.path or None,  # none: a problem of the configuration as a whole
        "line": p.line,
        "column": p.col,
        "severity": p.severity,
        "message": p.message,
        "hint": p.hint,
    }


def validate_document(
    problems: Iterable[Problem],
    *,
    manifests: int,
    tables: int,
    rows: int,
    errors: int,
    warnings: int,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "valid": errors == 0,
        "summary": {
            "manifests": manifests,
            "tables": tables,
            "rows": rows,
            "errors": errors,
            "warnings": warnings,
        },
        "problems": [problem_record(p) for p in problems],
    }


def _table_record(r: TableResult) -> dict[str, Any]:
    added, changed, removed = r.rows
    if not r.ok:
        outcome = "failed"
    elif r.resumed:
        outcome = "resumed"
    else:
        outcome = "applied"
    return {
        "name": r.name,
        "action": r.action,
        "enrichment_id": r.enrichment_id,
        "job_id": r.job_id,
        "rows": {"added": added, "changed": changed, "removed": removed},
        "duration_seconds": round(r.seconds, 3),
        "outcome": outcome,
        "error": None if r.ok else r.message,
        "message": r.message if r.ok else "",
    }


def _unchanged_record(name: str, enrichment_id: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "action": "no-op",
        "enrichment_id": enrichment_id,
        "job_id": None,
        "rows": {"added": 0, "changed": 0, "removed": 0},
        "duration_seconds": 0.0,
        "outcome": "unchanged",
        "error": None,
        "message": "",
    }


def apply_document(
    plan: Plan | None, results: Sequence[TableResult], error: str | None = None
) -> dict[str, Any]:
    """The result of one apply: every table of the plan (no-op ones as "unchanged") and every
    job an interrupted apply had left pending."""
    tables = [_table_record(r) for r in results]
    done = {r.name for r in results if not r.resumed}
    if plan is not None:
        tables += [
            _unchanged_record(t.name, t.enrichment_id)
            for t in plan.tables
            if not t.has_changes and t.name not in done
        ]
    tables.sort(key=lambda t: (t["name"], t["outcome"] != "resumed"))
    failed = [r for r in results if not r.ok]
    applied = [r for r in results if r.ok and not r.resumed]
    if error is not None:
        outcome = "error"
    elif failed:
        outcome = "failed"
    elif applied:
        outcome = "applied"
    else:
        outcome = "no-changes"
    return {
        "format_version": FORMAT_VERSION,
        "outcome": outcome,
        "error": error,
        "fingerprint": plan.fingerprint if plan is not None else None,
        "summary": {
            "tables": len(tables),
            "succeeded": len(results) - len(failed),
            "failed": len(failed),
            "rows_added": sum(r.rows[0] for r in applied),
            "rows_changed": sum(r.rows[1] for r in applied),
            "rows_removed": sum(r.rows[2] for r in applied),
        },
        "tables": tables,
    }


def write_document(document: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    out.flush()
