"""`bpsync import --generate`: write an existing enrichment's manifest and CSV from BigPanda
and adopt it into state (SPEC §7).

Per table the order keeps "both files or neither, and no state entry without its files":
1. every refusal is checked before anything is written (names, files, who holds the id);
2. the CSV (read from BigPanda on v2.1, canonicalised from `--csv FILE` on v1) and the
   manifest are written to hidden temporary names beside their final ones;
3. both are renamed into place, then the snapshot and the state entry are written; a failure
   at any step removes what this table wrote.
The state's schema is taken from the manifest as bpsync loads it back, so a following plan
compares like with like and says `No changes.`
"""

from __future__ import annotations

import csv
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from bpsync.bigpanda import facts
from bpsync.bigpanda.models import Enrichment, ReadProgress, TableReader
from bpsync.config import Config
from bpsync.errors import BpsyncError, ConfigError, InvalidInput, NotFoundError, Problem
from bpsync.manifest import Manifest, load_manifest
from bpsync.state import State, StateBackend, TableState
from bpsync.table import ProblemSink, format_row, scan_table, sha256_file
from bpsync.yamlfile import load_schema

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # the manifest schema's `name`
_SLUG_RUN = re.compile(r"[^a-z0-9]+")


class ImportClient(TableReader, Protocol):
    """The part of the BigPanda client an import uses."""

    @property
    def can_read_rows(self) -> bool: ...
    def get_enrichment(self, enrichment_id: str) -> Enrichment: ...
    def list_enrichments(self) -> list[Enrichment]: ...


@dataclass(frozen=True)
class Imported:
    """One table written and adopted."""

    name: str
    enrichment_id: str
    manifest: str  # display paths
    csv: str
    rows: int
    problems: tuple[Problem, ...]  # what `validate` finds in BigPanda's own table


@dataclass
class Importer:
    config: Config
    backend: StateBackend
    client: ImportClient
    directory: Path  # where the files go
    progress: Callable[[str], ReadProgress | None] = lambda name: None

    # -- planning the names ----------------------------------------------------------------

    def check_one(self, name: str, enrichment_id: str, manifests: list[Manifest]) -> None:
        """Refuse (nothing written) when NAME, its files or the enrichment are taken."""
        state = self.backend.read()
        if not NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{name!r} is not a valid table name",
                hint="use letters, digits, - _ . (starting with a letter or digit)",
            )
        for m in manifests:
            if m.name == name:
                raise ConfigError(
                    f"table {name} already exists ({m.display})",
                    hint="choose another NAME, or run `bpsync import NAME ID` without "
                    "--generate to adopt an id for that manifest",
                )
        held = _holders(enrichment_id, manifests, state)
        if held:
            raise ConfigError(
                f"enrichment {enrichment_id} is already managed by {held}",
                hint="nothing to import; run `bpsync plan` to see it",
            )
        if state.table(name) is not None:
            raise ConfigError(
                f"table {name} is already in state (enrichment {state.table(name).enrichment_id})",  # type: ignore[union-attr]
                hint="choose another NAME",
            )
        for path in self.paths(name):
            if path.exists() or path.is_symlink():
                raise ConfigError(
                    f"{self._display(path)} already exists; nothing was written",
                    hint="choose another NAME or --dir, or move the file away",
                )
        self.check_discoverable(name)

    def check_discoverable(self, name: str) -> None:
        """The manifest must be where `manifests` finds it, or the next plan would not see
        the table and would deactivate it."""
        rel = self._relative(self.paths(name)[0])
        if rel is None or not any(_glob_match(p, rel) for p in self.config.manifests):
            patterns = ", ".join(self.config.manifests)
            raise ConfigError(
                f"{self._display(self.paths(name)[0])} would not be found by the manifests "
                f"pattern(s) {patterns} (bpsync.yaml)",
                hint="give --dir a directory those patterns cover",
            )

    def unknown(self, manifests: list[Manifest], include_inactive: bool) -> list[Enrichment]:
        """Enrichments no manifest and no state entry knows, sorted by map name then id."""
        state = self.backend.read()
        found = [
            e
            for e in self.client.list_enrichments()
            if (include_inactive or e.active) and not _holders(e.id, manifests, state)
        ]
        return sorted(found, key=lambda e: (e.name or "", e.id))

    def names_for(self, found: Iterable[Enrichment], manifests: list[Manifest]) -> list[str]:
        """A table name per enrichment: its map name slugged, a numeric suffix on collision
        with each other, a manifest, a state entry or a file in the directory."""
        state = self.backend.read()
        taken = {m.name for m in manifests} | set(state.tables)
        out: list[str] = []
        for e in found:
            base = slug(e.name or "") or "table"
            name, n = base, 1
            while name in taken or any(p.exists() for p in self.paths(name)):
                n += 1
                name = f"{base}-{n}"
            taken.add(name)
            out.append(name)
        return out

    # -- writing ---------------------------------------------------------------------------

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.yaml", self.directory / f"{name}.csv"

    def generate(self, name: str, e: Enrichment, csv_source: Path | None) -> Imported:
        """Write NAME's manifest and CSV from enrichment `e`, then adopt it."""
        columns = tuple(str(f.get("title", "")) for f in e.fields)
        if not columns or not all(columns):
            raise BpsyncError(
                f"{name}: enrichment {e.id} has no usable fields in BigPanda's answer",
                hint="check the enrichment in BigPanda's UI",
            )
        manifest_path, csv_path = self.paths(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp_csv = _temp(csv_path)
        tmp_manifest = _temp(manifest_path)
        placed: list[Path] = []
        _prewarm()
        try:
            if csv_source is not None:
                rows = _canonical_copy(csv_source, tmp_csv)
            else:
                rows = self.client.read_table(
                    e.id, columns, tmp_csv, table=name, on_progress=self.progress(name)
                ).rows
            tmp_manifest.write_text(manifest_text(name, e, csv_path.name), encoding="utf-8")
            for tmp, final in ((tmp_csv, csv_path), (tmp_manifest, manifest_path)):
                if final.exists():  # appeared meanwhile: never overwrite a user's file
                    raise ConfigError(f"{self._display(final)} appeared meanwhile; not written")
                os.replace(tmp, final)
                placed.append(final)
            manifest = self._load(manifest_path)
            sink = ProblemSink(manifest.csv_display)
            info = scan_table(manifest.csv_path, manifest.layout, sink)
            self._adopt(manifest, e, info.rows)
        except BaseException:
            for path in (tmp_csv, tmp_manifest, *placed):
                path.unlink(missing_ok=True)
            raise
        return Imported(
            name, e.id, manifest.display, manifest.csv_display, rows, tuple(sink.finish())
        )

    def _load(self, path: Path) -> Manifest:
        manifest, problems = load_manifest(path, self.config.root)
        errors = [p for p in problems if p.severity == "error"]
        if manifest is None or errors:
            # BigPanda's schema breaks a manifest rule (e.g. a tag name): the files stay out.
            raise InvalidInput(errors or problems)
        return manifest

    def _adopt(self, m: Manifest, e: Enrichment, rows: int) -> None:
        sha = sha256_file(m.csv_path)  # the written CSV is canonical: its bytes are the form
        self.backend.put_snapshot(sha, m.csv_path)
        ts = TableState(
            m.name,
            e.id,
            self.config.api.version,
            m.schema(),
            remote_version=e.version,
            sha256=sha,
            rows=rows,
        )
        state = self.backend.read()
        self.backend.write(state.with_table(ts))

    def _display(self, path: Path) -> str:
        rel = self._relative(path)
        return rel if rel is not None else str(path)

    def _relative(self, path: Path) -> str | None:
        try:
            return path.resolve().relative_to(self.config.root.resolve()).as_posix()
        except ValueError:
            return None


def _prewarm() -> None:
    """Import the manifest checker's schema code in a background thread: the read spends
    most of its time waiting on the rate limit, and the check after it needs that code."""

    def work() -> None:
        import jsonschema  # noqa: F401  (heavy, ~0.2 s)

        load_schema("manifest")

    threading.Thread(target=work, name="bpsync-prewarm", daemon=True).start()


def default_directory(config: Config) -> Path:
    """The directory of the first `manifests` pattern (its part before any glob)."""
    first = config.manifests[0] if config.manifests else "tables/*.yaml"
    parts: list[str] = []
    for part in Path(first).parts[:-1]:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return config.root.joinpath(*parts) if parts else config.root


def slug(map_name: str) -> str:
    """A table name from a map name: lowercase, runs of other characters turned into `-`."""
    return _SLUG_RUN.sub("-", map_name.lower()).strip("-")[:100].strip("-")


def manifest_text(name: str, e: Enrichment, csv_name: str) -> str:
    """The manifest of enrichment `e`, as SPEC §7 lists its keys."""
    doc: dict[str, Any] = {"name": name, "map_name": e.name if e.name is not None else name}
    if e.description not in (None, ""):
        doc["description"] = e.description
    doc["active"] = e.active
    if e.when not in (None, ""):
        doc["when"] = e.when
    doc["csv"] = csv_name
    doc["enrichment_id"] = e.id
    doc["fields"] = [_field(f) for f in e.fields]
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)


def _field(f: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"title": f.get("title"), "type": f.get("type")}
    tag = f.get("tag_name")
    if tag not in (None, "") and tag != f.get("title"):
        out["tag_name"] = tag
    if f.get("type") == facts.RESULT_TAG and isinstance(f.get("override_existing"), bool):
        out["override_existing"] = f["override_existing"]
    return out


def _holders(enrichment_id: str, manifests: list[Manifest], state: State) -> str:
    """Who already holds this enrichment id ("" when nobody)."""
    for m in manifests:
        if m.enrichment_id == enrichment_id:
            return f"manifest {m.display}"
    for ts in state.tables.values():
        if enrichment_id in (ts.enrichment_id, ts.pending and ts.pending.enrichment_id):
            return f"table {ts.name} (state)"
    return ""


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _canonical_copy(source: Path, dest: Path) -> int:
    """`source` (a CSV exported from BigPanda's UI) rewritten in canonical form; its rows.

    Its rows are written as they are; `validate`-style checks come after adoption."""
    if not source.is_file():
        raise ConfigError(f"--csv {source}: no such file")
    lines = 0
    try:
        with source.open(encoding="utf-8-sig", newline="") as src, dest.open("wb") as out:
            for cells in csv.reader(src, strict=True):
                out.write((format_row(cells) + "\n").encode("utf-8"))
                lines += 1
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--csv {source}: not UTF-8 ({exc.reason})",
            hint="export the table again as UTF-8, or convert it (iconv -t UTF-8)",
        ) from None
    except csv.Error as exc:
        raise ConfigError(f"--csv {source}: malformed CSV ({exc})") from None
    if not lines:
        raise ConfigError(f"--csv {source}: the file is empty", hint="export the table again")
    return lines - 1


def _glob_match(pattern: str, rel: str) -> bool:
    """Whether `rel` (a POSIX path) matches a `manifests` glob (`**` spans directories)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.fullmatch(out, rel) is not None


def not_found(enrichment_id: str, exc: NotFoundError) -> BpsyncError:
    return NotFoundError(
        f"enrichment {enrichment_id} does not exist in BigPanda (HTTP 404); nothing was written",
        hint="check the id (`bpsync import --all --generate` imports every enrichment that "
        "exists), and that the token and region point at the right organisation",
        status=exc.status,
    )
