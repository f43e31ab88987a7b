"""What review on GitHub needs to know about plans: markers, fingerprints, comment size.

Approval by fingerprint: the plan workflow posts the plan of a pull request as ONE comment,
found again on every push by its hidden marker (`<!-- bpsync:plan -->`) and its author, and
updated in place. That comment ends with the plan's fingerprint. On merge, the apply
workflow reads the fingerprint back from the merged pull request's comment and runs
`bpsync apply --expect-fingerprint FP`, which refuses unless a fresh plan has exactly that
fingerprint: what is applied is what reviewers read, or nothing.

Only comments written by the expected author count (the token's own user, or
`github-actions[bot]` for a workflow token, or `--author`): anyone may write a comment that
holds the marker, and a pull request's author must not be able to approve a plan by posting
one. Other comments, including quotes of ours, are never touched.

Pure text work, no HTTP: the GitHub calls are in bpsync.github.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from bpsync.errors import PlanError

DEFAULT_API_URL = "https://api.github.com"
# The plan comment's marker; the Markdown rendering starts with it (bpsync.render.markdown).
# With environments (SPEC §8) each has its own comment and issue: `<!-- bpsync:plan:prod -->`.
PLAN_MARKER = "<!-- bpsync:plan -->"
DRIFT_MARKER = "<!-- bpsync:drift -->"
_ANY_PLAN_MARKER = re.compile(r"<!-- bpsync:plan(?::([A-Za-z0-9_-]+))? -->")
# GitHub refuses issue and comment bodies longer than this (characters).
COMMENT_LIMIT = 65_536
# The author of comments and issues written with a workflow's GITHUB_TOKEN, which cannot
# read `GET /user` to learn its own login.
ACTIONS_BOT = "github-actions[bot]"
# The footer line of the Markdown rendering. Cell values escape `:`, so a CSV value cannot
# forge this line.
_MD_FINGERPRINT = re.compile(r"^Fingerprint: `(sha256:[0-9a-f]{64})`\s*$", re.MULTILINE)
# The top-level member of the JSON rendering and of a saved plan (two-space indent).
_JSON_FINGERPRINT = re.compile(r'^  "fingerprint": "(sha256:[0-9a-f]{64})",?\s*$')
_TRUNCATED = (
    "\n\n> [!NOTE]\n> Cut to fit GitHub's {limit:,}-character comment limit; every change is "
    "in the workflow's summary and in its plan artifact.\n\n"
)
# The footer kept whole when a body is cut, if it is this close to the end.
_FOOTER_REACH = 2_000


def plan_marker(environment: str | None) -> str:
    """The hidden marker of the plan comment of `environment` (None: no environments)."""
    return f"<!-- bpsync:plan:{environment} -->" if environment else PLAN_MARKER


def drift_marker(environment: str | None) -> str:
    """The hidden marker of the drift issue of `environment` (None: no environments)."""
    return f"<!-- bpsync:drift:{environment} -->" if environment else DRIFT_MARKER


def body_environment(body: str) -> tuple[bool, str | None]:
    """(found, environment) of the first plan marker in `body`: a Markdown rendering names
    the environment it was planned for."""
    m = _ANY_PLAN_MARKER.search(body)
    return (True, m.group(1)) if m else (False, None)


def with_marker(body: str, marker: str) -> str:
    """The body with the marker on its first line (added when absent)."""
    return body if marker in body else f"{marker}\n{body}"


def fit_comment(body: str, limit: int = COMMENT_LIMIT) -> str:
    """`body` cut to at most `limit` characters, keeping its fingerprint footer whole."""
    if len(body) <= limit:
        return body
    note = _TRUNCATED.format(limit=limit)
    tail = ""
    last = None
    for m in _MD_FINGERPRINT.finditer(body):
        last = m
    if last is not None and len(body) - last.start() <= _FOOTER_REACH:
        tail = body[last.start() :]
    head = body[: max(0, limit - len(note) - len(tail))]
    cut = head.rfind("\n")
    head = head[: cut + 1] if cut > 0 else head
    return head.rstrip("\n") + note + tail


def is_ours(item: Mapping[str, Any], marker: str, author: str) -> bool:
    """True when a comment or issue holds `marker` and was written by `author`."""
    user = item.get("user") or {}
    login = user.get("login") if isinstance(user, dict) else None
    body = item.get("body")
    return (
        isinstance(body, str)
        and marker in body
        and isinstance(login, str)
        and login.lower() == author.lower()
    )


def fingerprint_from_text(text: str) -> str | None:
    """The fingerprint of a Markdown (or JSON) rendering; the last one when several."""
    found = _MD_FINGERPRINT.findall(text)
    if found:
        return str(found[-1])
    for line in text.splitlines():
        m = _JSON_FINGERPRINT.match(line)
        if m:
            return m.group(1)
    return None


def fingerprint_from_file(path: Path) -> str:
    """The fingerprint of a rendering or saved plan file; PlanError when it has none.

    JSON (`--format json`, `plan --out`) is scanned line by line up to its `tables` member:
    a saved plan of millions of rows is never loaded whole.
    """
    try:
        f = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise PlanError(f"{path}: file not found") from None
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        first = f.read(1)
        if first == "{":
            fp = _json_fingerprint(first, f)
        else:
            fp = fingerprint_from_text(first + f.read(4 * COMMENT_LIMIT))
    if fp is None:
        raise PlanError(
            f"no bpsync plan fingerprint (sha256:…) found in {path}",
            hint="give a file written by `bpsync plan --out`, `--format markdown` or "
            "`--format json`",
        )
    return fp


def _json_fingerprint(first: str, f: IO[str]) -> str | None:
    for i, line in enumerate(f):
        if i == 0:
            line = first + line
        m = _JSON_FINGERPRINT.match(line)
        if m:
            return m.group(1)
        if line.startswith('  "tables"'):
            return None
    return None


REVIEW_HINT = (
    "nothing is applied that nobody reviewed: read a fresh plan (`bpsync plan`, or this "
    "workflow's log), then run the apply workflow by hand with that plan's fingerprint"
)
