"""`bpsync validate`: every manifest against its schema, every CSV against SPEC §4."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from bpsync.config import Config
from bpsync.errors import InvalidInput, Problem, UsageError
from bpsync.manifest import Manifest, load_manifests
from bpsync.table import ProblemSink, TableInfo, scan_table


@dataclass(frozen=True)
class CheckedTable:
    manifest: Manifest
    info: TableInfo


@dataclass(frozen=True)
class ValidationReport:
    manifests: tuple[Manifest, ...]
    tables: tuple[CheckedTable, ...]
    problems: tuple[Problem, ...]  # as shown: capped per file, with "… and N more" lines
    error_count: int  # every error found, including those the cap left unshown
    warning_count: int

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def select(
    manifests: list[Manifest], names: Collection[str], problems: Collection[Problem] = ()
) -> list[Manifest]:
    """The manifests named by `--table`; an unknown name is a usage error, unless a manifest
    failed to load (the name may be that manifest's: its real error is what to show)."""
    if not names:
        return manifests
    known = {m.name for m in manifests}
    unknown = sorted(set(names) - known)
    if unknown and any(p.severity == "error" for p in problems):
        raise InvalidInput(list(problems))
    if unknown:
        raise UsageError(
            f"unknown table(s): {', '.join(unknown)}",
            hint=f"known tables: {', '.join(sorted(known)) or '(none)'}",
        )
    return [m for m in manifests if m.name in names]


def validate_project(config: Config, tables: Collection[str] = ()) -> ValidationReport:
    # Every table, whichever environment is selected: validation is of the repository.
    manifests, problems = load_manifests(config, every_environment=True)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    checked = []
    for manifest in select(manifests, tables, problems):
        sink = ProblemSink(manifest.csv_display)
        info = scan_table(manifest.csv_path, manifest.layout, sink)
        problems += sink.finish()
        errors += sink.errors
        warnings += sink.warnings
        checked.append(CheckedTable(manifest, info))
    return ValidationReport(tuple(manifests), tuple(checked), tuple(problems), errors, warnings)
