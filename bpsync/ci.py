"""GitHub glue for review and CI: `bpsync ci comment | fingerprint | issue`.

    bpsync ci comment --body-file plan.md            # upsert the one sticky plan comment of a PR
    bpsync ci fingerprint --from-comment-of-commit SHA   # the fingerprint reviewers approved
    bpsync ci fingerprint --from-file plan.md|plan.json|plan.out
    bpsync ci issue --title T --body-file F [--close]    # one drift issue, found by its marker

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

Stdlib only (urllib): this module runs in CI jobs that hold a write token and should pull in
as little as possible. The token is sent in a header and never printed; plain `http://` API
URLs are refused unless the host is loopback (tests serve a fake API on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from bpsync.cli import EXIT_OK
from bpsync.errors import (
    ApiError,
    ApplyRefused,
    AuthError,
    ConfigError,
    NotFoundError,
    PlanError,
    UsageError,
)

if TYPE_CHECKING:
    from bpsync.cli import Context

DEFAULT_API_URL = "https://api.github.com"
# GitHub refuses issue and comment bodies longer than this (characters).
COMMENT_LIMIT = 65_536
# The author of comments and issues written with a workflow's GITHUB_TOKEN, which cannot
# read `GET /user` to learn its own login.
ACTIONS_BOT = "github-actions[bot]"
DRIFT_MARKER = "<!-- bpsync:drift -->"
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
# The footer line of the Markdown rendering. Cell values escape `:`, so a CSV value cannot
# forge this line.
_MD_FINGERPRINT = re.compile(r"^Fingerprint: `(sha256:[0-9a-f]{64})`\s*$", re.MULTILINE)
# The top-level member of the JSON rendering and of a saved plan (two-space indent).
_JSON_FINGERPRINT = re.compile(r'^  "fingerprint": "(sha256:[0-9a-f]{64})",?\s*$')
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_SHA = re.compile(r"[0-9a-fA-F]{7,40}")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
_MAX_PAGES = 200  # 20,000 comments: a bound against a server that always says "next"
_TRUNCATED = (
    "\n\n> [!NOTE]\n> Cut to fit GitHub's {limit:,}-character comment limit; every change is "
    "in the workflow's summary and in its plan artifact.\n\n"
)
_RETRYABLE = frozenset({500, 502, 503, 504})


# -- the command line ------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the `ci` command group to the `bpsync` subparsers."""
    ci = sub.add_parser(
        "ci",
        help="GitHub helpers for pull-request review and CI",
        description="GitHub helpers: the sticky plan comment, the approved fingerprint, "
        "the drift issue. Read GITHUB_TOKEN (or GH_TOKEN), GITHUB_REPOSITORY and "
        f"GITHUB_API_URL (default {DEFAULT_API_URL}).",
    )
    cisub = ci.add_subparsers(dest="ci_command", metavar="SUBCOMMAND")
    cisub.required = True

    c = cisub.add_parser(
        "comment",
        help="create or update the one plan comment of a pull request",
        description="Upsert the pull request's sticky comment: update the comment by --author "
        "that holds the marker, else create one. Other comments are left alone.",
    )
    c.add_argument(
        "--body-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the comment (e.g. `bpsync show plan.out --format markdown`)",
    )
    c.add_argument(
        "--pr",
        type=_pr_number,
        metavar="N",
        help="pull request number (default: from GITHUB_EVENT_PATH)",
    )
    _marker_author(
        c,
        "the plan comment's marker <!-- bpsync:plan -->",
        "the token's own login, or github-actions[bot] for a workflow token",
    )
    c.set_defaults(func=comment)

    f = cisub.add_parser(
        "fingerprint",
        help="print the approved plan fingerprint",
        description="Print the fingerprint (sha256:…) of the plan reviewers saw, or exit 1.",
    )
    source = f.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-comment-of-commit",
        metavar="SHA",
        help="the plan comment of the merged pull request of commit SHA",
    )
    source.add_argument(
        "--from-pr", type=_pr_number, metavar="N", help="the plan comment of pull request N"
    )
    source.add_argument(
        "--from-file",
        type=Path,
        metavar="FILE",
        help="a rendering (markdown or json) or a saved plan file",
    )
    _marker_author(f, "the plan comment's marker <!-- bpsync:plan -->", ACTIONS_BOT)
    f.set_defaults(func=fingerprint)

    i = cisub.add_parser(
        "issue",
        help="open, update or close the one issue found by a marker (drift)",
        description="Upsert the open issue by --author that holds the marker (its title and "
        "body are replaced), or with --close close it if open.",
    )
    i.add_argument("--title", required=True, metavar="TITLE")
    i.add_argument("--body-file", type=Path, metavar="FILE", help="the issue body")
    i.add_argument(
        "--close",
        action="store_true",
        help="close the issue if open (with --body-file: comment first)",
    )
    _marker_author(i, DRIFT_MARKER, "the token's own login, or github-actions[bot]")
    i.set_defaults(func=issue)


def _marker_author(p: argparse.ArgumentParser, marker_default: str, author_default: str) -> None:
    p.add_argument(
        "--marker",
        metavar="TEXT",
        help=f"hidden text that identifies the comment (default: {marker_default})",
    )
    p.add_argument(
        "--author",
        metavar="LOGIN",
        help=f"only this author's comment counts (default: {author_default})",
    )


def _pr_number(text: str) -> int:
    try:
        n = int(text.lstrip("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pull request number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a pull request number: {text!r}")
    return n


def comment(ctx: Context) -> int:
    args = ctx.args
    marker = args.marker or _plan_marker()
    body = fit_comment(with_marker(_read_text(_path(ctx, args.body_file)), marker))
    gh = GitHub.from_env(ctx.env)
    number = args.pr or pr_from_event(ctx.env)
    author = args.author or gh.own_login()
    result = upsert_comment(gh, number, body, marker=marker, author=author)
    verb = "Updated" if result.updated else "Created"
    ctx.console.note(f"{verb} the plan comment of pull request #{number}: {result.url}")
    ctx.console.print(result.url)
    return EXIT_OK


def fingerprint(ctx: Context) -> int:
    args = ctx.args
    if args.from_file is not None:
        fp = fingerprint_from_file(_path(ctx, args.from_file))
        ctx.console.print(fp)
        return EXIT_OK
    marker = args.marker or _plan_marker()
    author = args.author or ACTIONS_BOT
    gh = GitHub.from_env(ctx.env)
    if args.from_pr is not None:
        number = args.from_pr
        where = f"pull request #{number}"
    else:
        sha = args.from_comment_of_commit.strip()
        if not _SHA.fullmatch(sha):
            raise ConfigError(f"not a commit SHA: {sha!r}")
        number = merged_pr_of_commit(gh, sha)
        where = f"pull request #{number} (merged as {sha[:12]})"
    found = find_comment(gh, number, marker=marker, author=author)
    if found is None:
        raise ApplyRefused(
            f"no plan comment by {author} on {where}, so no reviewed plan approves this change",
            hint=_REVIEW_HINT,
        )
    approved = fingerprint_from_text(str(found.get("body") or ""))
    if approved is None:
        raise ApplyRefused(
            f"the plan comment on {where} shows no fingerprint (its last plan failed?)",
            hint=_REVIEW_HINT,
        )
    ctx.console.note(f"Approved fingerprint from the plan comment on {where}: {approved}")
    ctx.console.print(approved)
    return EXIT_OK


_REVIEW_HINT = (
    "nothing is applied that nobody reviewed: read a fresh plan (`bpsync plan`, or this "
    "workflow's log), then run the apply workflow by hand with that plan's fingerprint"
)


def issue(ctx: Context) -> int:
    args = ctx.args
    marker = args.marker or DRIFT_MARKER
    body = None
    if args.body_file is not None:
        body = fit_comment(with_marker(_read_text(_path(ctx, args.body_file)), marker))
    elif not args.close:
        raise UsageError("bpsync ci issue: give --body-file FILE, or --close")
    gh = GitHub.from_env(ctx.env)
    author = args.author or gh.own_login()
    if args.close:
        closed = close_issue(gh, marker=marker, author=author, comment_body=body)
        if closed is None:
            ctx.console.note("No open issue holds the marker; nothing to close.")
        else:
            ctx.console.note(f"Closed issue #{closed['number']}: {closed.get('html_url', '')}")
        return EXIT_OK
    assert body is not None
    result = upsert_issue(gh, args.title, body, marker=marker, author=author)
    verb = "Updated" if result.updated else "Opened"
    ctx.console.note(f"{verb} issue #{result.number}: {result.url}")
    ctx.console.print(result.url)
    return EXIT_OK


def _plan_marker() -> str:
    from bpsync.render.markdown import MARKER  # heavy-ish; only the ci commands need it

    return MARKER


def _path(ctx: Context, path: Path) -> Path:
    """A path from the command line, relative to where bpsync runs (`-C DIR` included)."""
    start = ctx.cwd / ctx.args.directory if ctx.args.directory else ctx.cwd
    return path if path.is_absolute() else start / path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


# -- bodies and fingerprints -----------------------------------------------------------------


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
    if last is not None and len(body) - last.start() <= 2_000:
        tail = body[last.start() :]
    head = body[: max(0, limit - len(note) - len(tail))]
    cut = head.rfind("\n")
    head = head[: cut + 1] if cut > 0 else head
    return head.rstrip("\n") + note + tail


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


def _json_fingerprint(first: str, f: Any) -> str | None:
    for i, line in enumerate(f):
        if i == 0:
            line = first + line
        m = _JSON_FINGERPRINT.match(line)
        if m:
            return m.group(1)
        if line.startswith('  "tables"'):
            return None
    return None


# -- the GitHub REST API ---------------------------------------------------------------------


@dataclass
class GitHub:
    """A minimal GitHub REST client over urllib: JSON in and out, pagination, no secrets out."""

    api_url: str
    token: str
    repo: str
    timeout: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    retries: int = 2

    def __repr__(self) -> str:  # never the token
        return f"GitHub(api_url={self.api_url!r}, repo={self.repo!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitHub:
        token = (env.get("GITHUB_TOKEN") or env.get("GH_TOKEN") or "").strip()
        if not token:
            raise ConfigError(
                "GITHUB_TOKEN is not set",
                hint="in a workflow pass `GITHUB_TOKEN: ${{ github.token }}` in the step's env",
            )
        repo = env.get("GITHUB_REPOSITORY", "").strip()
        if not _REPO.fullmatch(repo):
            raise ConfigError(
                "GITHUB_REPOSITORY is not set to owner/name"
                + (f" (it is {repo!r})" if repo else ""),
                hint="GitHub Actions sets it; elsewhere export GITHUB_REPOSITORY=owner/name",
            )
        api_url = check_api_url(env.get("GITHUB_API_URL", "").strip() or DEFAULT_API_URL)
        return cls(api_url, token, repo)

    def repo_path(self, path: str) -> str:
        return f"/repos/{self.repo}{path}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[Any, Mapping[str, str]]:
        """One call; returns (decoded JSON or None, headers). ApiError on any failure."""
        import urllib.error
        import urllib.request

        url = path if path.startswith(("http://", "https://")) else self.api_url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": _user_agent(),
            "Authorization": f"Bearer {self.token}",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        # Only idempotent calls are retried: a retried POST could post a second comment.
        attempts = 1 + (self.retries if method in ("GET", "PATCH") else 0)
        for attempt in range(attempts):
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with _opener(url).open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    return _decode(raw), dict(resp.headers.items())
            except urllib.error.HTTPError as e:
                raw = e.read()
                if e.code in _RETRYABLE and attempt + 1 < attempts:
                    self.sleep(2.0**attempt)
                    continue
                raise _api_error(method, urlsplit(url).path, e.code, raw) from None
            except (urllib.error.URLError, OSError) as e:
                if attempt + 1 < attempts:
                    self.sleep(2.0**attempt)
                    continue
                reason = getattr(e, "reason", e)
                raise ApiError(
                    f"cannot reach the GitHub API at {self.api_url}: {reason}",
                    hint="check GITHUB_API_URL and the network",
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def paginate(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[Any]:
        """Every item of a list endpoint, following `Link: rel="next"` on the same API host."""
        query = {"per_page": "100", **(params or {})}
        url: str | None = f"{self.api_url}{path}?{urlencode(query)}"
        base = urlsplit(self.api_url)
        for _ in range(_MAX_PAGES):
            if url is None:
                return
            items, headers = self.request("GET", url)
            if not isinstance(items, list):
                raise ApiError(f"GitHub answered GET {path} with something else than a list")
            yield from items
            url = _next_link(headers)
            if url is not None:
                nxt = urlsplit(url)
                if (nxt.scheme, nxt.netloc) != (base.scheme, base.netloc):
                    # The token goes only where GITHUB_API_URL points.
                    raise ApiError(f"GitHub's next page points to another host: {nxt.netloc}")
        raise ApiError(f"GET {path}: more than {_MAX_PAGES} pages; giving up")

    def own_login(self) -> str:
        """The token's login; a workflow token cannot read /user and is github-actions[bot]."""
        try:
            me, _ = self.request("GET", "/user")
        except (AuthError, NotFoundError):
            return ACTIONS_BOT
        login = me.get("login") if isinstance(me, dict) else None
        return str(login) if login else ACTIONS_BOT


def check_api_url(url: str) -> str:
    """The API URL without a trailing `/`; plain http only for loopback hosts."""
    from bpsync.bigpanda.urls import is_loopback_host

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"GITHUB_API_URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"GITHUB_API_URL {url!r} uses plain http",
            hint="the token would cross the network in clear text; use https",
        )
    return url.rstrip("/")


def _opener(url: str) -> Any:
    """An opener that follows redirects only within the API's origin.

    urllib forwards every header, Authorization included, to wherever a redirect points; the
    token must go nowhere but GITHUB_API_URL, so a redirect elsewhere is not followed (and
    fails as the 3xx answer it is).
    """
    import urllib.request
    from http.client import HTTPMessage
    from typing import IO

    from bpsync.bigpanda.urls import is_loopback_host

    origin = urlsplit(url)[:2]

    class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: HTTPMessage,
            newurl: str,
        ) -> urllib.request.Request | None:
            if urlsplit(newurl)[:2] != origin:
                return None
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    handlers: list[Any] = [SameOriginRedirects()]
    if is_loopback_host(urlsplit(url).hostname or ""):  # never through a proxy to ourselves
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _user_agent() -> str:
    from bpsync import __version__

    return f"bpsync/{__version__}"


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError("GitHub answered with something else than JSON") from None


def _api_error(method: str, path: str, status: int, raw: bytes) -> ApiError:
    message = ""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            message = str(doc.get("message") or "")
    except ValueError:
        message = raw[:200].decode("utf-8", "replace").strip()
    text = f"GitHub answered {method} {path} with {status}" + (f": {message}" if message else "")
    if status in (401, 403):
        return AuthError(
            text,
            status=status,
            hint="the token lacks a permission: the plan comment needs `pull-requests: write`, "
            "the drift issue `issues: write`; a pull request from a fork gets a read-only token",
        )
    if status == 404:
        return NotFoundError(text, status=status, hint="check GITHUB_REPOSITORY and the number")
    return ApiError(text, status=status)


def _next_link(headers: Mapping[str, str]) -> str | None:
    link = next((v for k, v in headers.items() if k.lower() == "link"), "")
    for part in link.split(","):
        m = _LINK_NEXT.search(part)
        if m:
            return m.group(1)
    return None


# -- comments, pull requests, issues ---------------------------------------------------------


@dataclass(frozen=True)
class Upserted:
    number: int
    url: str
    updated: bool


def pr_from_event(env: Mapping[str, str]) -> int:
    """The pull request number of the workflow's event (GITHUB_EVENT_PATH)."""
    path = env.get("GITHUB_EVENT_PATH", "")
    hint = "pass --pr N, or run in a `pull_request` workflow"
    if not path:
        raise ConfigError("no pull request number: GITHUB_EVENT_PATH is not set", hint=hint)
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the event payload {path}: {e}", hint=hint) from None
    candidates = [
        (event.get("pull_request") or {}).get("number") if isinstance(event, dict) else None,
        (event.get("issue") or {}).get("number") if isinstance(event, dict) else None,
        event.get("number") if isinstance(event, dict) else None,
    ]
    for n in candidates:
        if isinstance(n, int) and n > 0:
            return n
    raise ConfigError("the workflow's event is not about a pull request", hint=hint)


def _is_ours(item: Mapping[str, Any], marker: str, author: str) -> bool:
    user = item.get("user") or {}
    login = user.get("login") if isinstance(user, dict) else None
    body = item.get("body")
    return (
        isinstance(body, str)
        and marker in body
        and isinstance(login, str)
        and login.lower() == author.lower()
    )


def find_comment(gh: GitHub, number: int, *, marker: str, author: str) -> dict[str, Any] | None:
    """The first comment of the pull request by `author` that holds `marker`."""
    for c in gh.paginate(gh.repo_path(f"/issues/{number}/comments")):
        if isinstance(c, dict) and _is_ours(c, marker, author):
            return c
    return None


def upsert_comment(gh: GitHub, number: int, body: str, *, marker: str, author: str) -> Upserted:
    """Update our marked comment in place, or create it: one comment per pull request."""
    found = find_comment(gh, number, marker=marker, author=author)
    if found is not None:
        done, _ = gh.request(
            "PATCH", gh.repo_path(f"/issues/comments/{found['id']}"), {"body": body}
        )
        return Upserted(number, str((done or {}).get("html_url", "")), updated=True)
    done, _ = gh.request("POST", gh.repo_path(f"/issues/{number}/comments"), {"body": body})
    return Upserted(number, str((done or {}).get("html_url", "")), updated=False)


def merged_pr_of_commit(gh: GitHub, sha: str) -> int:
    """The merged pull request that brought commit `sha` (GET /commits/{sha}/pulls)."""
    pulls, _ = gh.request("GET", gh.repo_path(f"/commits/{sha}/pulls"))
    merged = [p for p in pulls or [] if isinstance(p, dict) and p.get("merged_at")]
    if not merged:
        raise ApplyRefused(
            f"commit {sha[:12]} is not the merge of a pull request, so no reviewed plan "
            "approves it",
            hint=_REVIEW_HINT,
        )
    exact = [p for p in merged if str(p.get("merge_commit_sha", "")).startswith(sha.lower())]
    chosen = exact[0] if exact else max(merged, key=lambda p: str(p.get("merged_at")))
    return int(chosen["number"])


def find_issue(gh: GitHub, *, marker: str, author: str) -> dict[str, Any] | None:
    """The first open issue (not pull request) by `author` that holds `marker`."""
    for it in gh.paginate(gh.repo_path("/issues"), {"state": "open"}):
        if isinstance(it, dict) and "pull_request" not in it and _is_ours(it, marker, author):
            return it
    return None


def upsert_issue(gh: GitHub, title: str, body: str, *, marker: str, author: str) -> Upserted:
    found = find_issue(gh, marker=marker, author=author)
    if found is not None:
        number = int(found["number"])
        done, _ = gh.request(
            "PATCH", gh.repo_path(f"/issues/{number}"), {"title": title, "body": body}
        )
        return Upserted(number, str((done or {}).get("html_url", "")), updated=True)
    done, _ = gh.request("POST", gh.repo_path("/issues"), {"title": title, "body": body})
    return Upserted(
        int((done or {}).get("number", 0)), str((done or {}).get("html_url", "")), updated=False
    )


def close_issue(
    gh: GitHub, *, marker: str, author: str, comment_body: str | None = None
) -> dict[str, Any] | None:
    found = find_issue(gh, marker=marker, author=author)
    if found is None:
        return None
    number = int(found["number"])
    if comment_body:
        gh.request("POST", gh.repo_path(f"/issues/{number}/comments"), {"body": comment_body})
    done, _ = gh.request(
        "PATCH", gh.repo_path(f"/issues/{number}"), {"state": "closed", "state_reason": "completed"}
    )
    return done if isinstance(done, dict) else found


__all__ = [
    "COMMENT_LIMIT",
    "DRIFT_MARKER",
    "GitHub",
    "fingerprint_from_file",
    "fingerprint_from_text",
    "fit_comment",
    "register",
    "upsert_comment",
]
