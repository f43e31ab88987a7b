"""`bpsync ci`: the sticky plan comment, the approved fingerprint, the drift issue.

GitHub is played by a fake REST API that each test serves on 127.0.0.1 (stdlib http.server in
a thread); nothing here talks to any other address.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import make_repo, manifest_yaml, run_cli

from bpsync.render.markdown import MARKER
from bpsync.review import COMMENT_LIMIT, DRIFT_MARKER, fingerprint_from_text, fit_comment

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghs_s3cr3t-token-never-printed"
REPO = "acme/tables"
BOT = "github-actions[bot]"
FP = "sha256:" + "ab" * 32
OTHER_FP = "sha256:" + "cd" * 32


def plan_body(fp: str = FP, extra: str = "") -> str:
    return f"{MARKER}\n### bpsync plan\n\n{extra}Fingerprint: `{fp}`\n\n**No changes.**\n"


# -- a fake GitHub -------------------------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str


@dataclass
class FakeGitHub:
    """Issue comments, issues and commit→pull lookups of one repository, in memory."""

    login: str | None = None  # None: a workflow token, which gets 403 on GET /user
    page_size: int = 100
    foreign_next: bool = False  # answer with a `next` link to another host
    redirect_comments: str | None = None  # answer the comment list with a 307 to this URL
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    issues: list[dict[str, Any]] = field(default_factory=list)
    pulls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _next_id: int = 1000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def author(self) -> str:
        return self.login or BOT

    def add_comment(self, pr: int, body: str, login: str = BOT) -> dict[str, Any]:
        self._next_id += 1
        c = {
            "id": self._next_id,
            "body": body,
            "user": {"login": login, "type": "Bot" if login.endswith("[bot]") else "User"},
            "html_url": f"https://github.test/{REPO}/pull/{pr}#issuecomment-{self._next_id}",
        }
        self.comments.setdefault(pr, []).append(c)
        return c

    def add_issue(self, title: str, body: str, login: str = BOT, **extra: Any) -> dict[str, Any]:
        self._next_id += 1
        it = {
            "number": self._next_id,
            "title": title,
            "body": body,
            "state": "open",
            "user": {"login": login},
            "html_url": f"https://github.test/{REPO}/issues/{self._next_id}",
            **extra,
        }
        self.issues.append(it)
        return it

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method != "GET"]

    # -- serving --

    def handle(self, method: str, raw_path: str, body: Any, auth: str) -> tuple[int, Any, dict]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        with self._lock:
            self.calls.append(Call(method, path, query, body, auth))
            if auth != f"Bearer {TOKEN}":
                return 401, {"message": "Bad credentials"}, {}
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any, dict]:
        base = f"/repos/{REPO}"
        if path == "/user" and method == "GET":
            if self.login is None:
                return 403, {"message": "Resource not accessible by integration"}, {}
            return 200, {"login": self.login}, {}
        if m := re.fullmatch(base + r"/issues/(\d+)/comments", path):
            pr = int(m.group(1))
            if method == "GET" and self.redirect_comments:
                return 307, {}, {"Location": self.redirect_comments}
            if method == "GET":
                return self._page(self.comments.get(pr, []), path, query)
            if method == "POST":
                return 201, self.add_comment(pr, body["body"], self.author), {}
        if (m := re.fullmatch(base + r"/issues/comments/(\d+)", path)) and method == "PATCH":
            for cs in self.comments.values():
                for c in cs:
                    if c["id"] == int(m.group(1)):
                        c["body"] = body["body"]
                        return 200, c, {}
            return 404, {"message": "Not Found"}, {}
        if (m := re.fullmatch(base + r"/commits/([0-9a-f]+)/pulls", path)) and method == "GET":
            return 200, self.pulls.get(m.group(1), []), {}
        if path == base + "/issues":
            if method == "GET":
                state = query.get("state", ["open"])[0]
                items = [i for i in self.issues if state == "all" or i["state"] == state]
                return self._page(items, path, query)
            if method == "POST":
                return 201, self.add_issue(body["title"], body["body"], self.author), {}
        if (m := re.fullmatch(base + r"/issues/(\d+)", path)) and method == "PATCH":
            for it in self.issues:
                if it["number"] == int(m.group(1)):
                    it.update(body)
                    return 200, it, {}
        return 404, {"message": "Not Found"}, {}

    def _page(self, items: list, path: str, query: dict) -> tuple[int, Any, dict]:
        size = min(int(query.get("per_page", ["30"])[0]), self.page_size)
        page = int(query.get("page", ["1"])[0])
        chunk = items[(page - 1) * size : page * size]
        headers = {}
        if page * size < len(items):
            host = "https://elsewhere.test" if self.foreign_next else self.url
            extra = "".join(f"&{k}={v[0]}" for k, v in query.items() if k not in ("page",))
            nxt = f"{host}{path}?page={page + 1}{extra}"
            headers["Link"] = f'<{nxt}>; rel="next", <{host}{path}?page=99>; rel="last"'
        return 200, chunk, headers


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, doc, headers = fake.handle(
                self.command, self.path, body, self.headers.get("Authorization", "")
            )
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def gh_env(fake: FakeGitHub, **extra: str) -> dict[str, str]:
    return {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_API_URL": fake.url,
        **extra,
    }


def ci(fake: FakeGitHub, argv: list[str], cwd: Path, **env: str) -> tuple[int, str, str]:
    code, out, err = run_cli(["ci", *argv], cwd, gh_env(fake, **env))
    assert TOKEN not in out and TOKEN not in err
    return code, out, err


# -- the sticky comment --------------------------------------------------------------------------


def test_comment_is_created_when_absent(github: FakeGitHub, tmp_path: Path) -> None:
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    github.add_comment(7, "LGTM", login="alice")
    code, out, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 0, err
    writes = github.writes()
    assert [(w.method, w.path) for w in writes] == [("POST", f"/repos/{REPO}/issues/7/comments")]
    assert writes[0].body["body"] == plan_body()
    assert out.strip() == github.comments[7][-1]["html_url"]
    assert "Created" in err
    assert all(c.authorization == f"Bearer {TOKEN}" for c in github.calls)


def test_comment_is_updated_in_place_when_the_marker_is_present(
    github: FakeGitHub, tmp_path: Path
) -> None:
    github.add_comment(7, "first review", login="alice")
    ours = github.add_comment(7, plan_body(OTHER_FP))
    github.add_comment(7, "more", login="bob")
    (tmp_path / "plan.md").write_text(plan_body(FP), encoding="utf-8")
    for _ in range(2):  # a second push updates the same comment again
        code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
        assert code == 0, err
    writes = github.writes()
    assert [(w.method, w.path) for w in writes] == [
        ("PATCH", f"/repos/{REPO}/issues/comments/{ours['id']}")
    ] * 2
    assert len(github.comments[7]) == 3
    assert ours["body"] == plan_body(FP)
    assert "Updated" in err


def test_other_comments_are_left_alone(github: FakeGitHub, tmp_path: Path) -> None:
    other_bot = github.add_comment(7, "<!-- other-bot:report -->\nCoverage 91%", "codecov[bot]")
    quoting = github.add_comment(7, f"> {MARKER}\n> Fingerprint: `{OTHER_FP}`\nlooks odd", "alice")
    before = [dict(c) for c in github.comments[7]]
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 0, err
    assert [w.method for w in github.writes()] == ["POST"]
    assert github.comments[7][:2] == before
    assert other_bot["body"].startswith("<!-- other-bot")
    assert quoting["user"]["login"] == "alice"


def test_comment_pages_are_followed(github: FakeGitHub, tmp_path: Path) -> None:
    github.page_size = 30  # the server pages by less than the 100 asked for
    for i in range(95):
        github.add_comment(7, f"comment {i}", login="alice")
    ours = github.add_comment(7, plan_body(OTHER_FP))
    github.add_comment(7, "after", login="bob")
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 0, err
    pages = [
        c.query.get("page", ["1"])[0]
        for c in github.calls
        if c.method == "GET" and c.path.endswith("/comments")
    ]
    assert pages == ["1", "2", "3", "4"]
    assert [(w.method, w.path) for w in github.writes()] == [
        ("PATCH", f"/repos/{REPO}/issues/comments/{ours['id']}")
    ]


def test_a_next_page_on_another_host_is_not_followed(github: FakeGitHub, tmp_path: Path) -> None:
    github.page_size, github.foreign_next = 2, True
    for i in range(3):
        github.add_comment(7, f"comment {i}", login="alice")
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 1
    assert "another host" in err
    assert not github.writes()


def test_a_redirect_elsewhere_does_not_carry_the_token(github: FakeGitHub, tmp_path: Path) -> None:
    seen: list[str] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

    other = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    thread = threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        github.redirect_comments = f"http://127.0.0.1:{other.server_address[1]}/steal"
        (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
        code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    finally:
        other.shutdown()
        other.server_close()
        thread.join()
    assert code == 1
    assert "307" in err
    assert seen == []
    assert not github.writes()


def test_comment_respects_githubs_size_limit(github: FakeGitHub, tmp_path: Path) -> None:
    rows = "".join(f"| + | <code>app{i:06d}</code> | <code>owner</code> |\n" for i in range(3000))
    body = plan_body(FP, extra=rows + "\n")
    assert len(body) > COMMENT_LIMIT
    (tmp_path / "plan.md").write_text(body, encoding="utf-8")
    code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 0, err
    posted = github.writes()[0].body["body"]
    assert len(posted) <= COMMENT_LIMIT
    assert posted.startswith(MARKER)
    assert "65,536-character comment limit" in posted
    assert posted.endswith(f"Fingerprint: `{FP}`\n\n**No changes.**\n")
    assert fingerprint_from_text(posted) == FP


def test_fit_comment_leaves_short_bodies_alone_and_cuts_at_a_line() -> None:
    assert fit_comment("short") == "short"
    cut = fit_comment("x" * 50 + "\n" + "y" * 5000, limit=2000)
    assert len(cut) <= 2000
    assert "y" not in cut.split("\n\n> [!NOTE]")[0]


def test_comment_finds_the_pr_in_the_event_payload(github: FakeGitHub, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps({"action": "synchronize", "number": 12, "pull_request": {"number": 12}}),
        encoding="utf-8",
    )
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, _, err = ci(
        github, ["comment", "--body-file", "plan.md"], tmp_path, GITHUB_EVENT_PATH=str(event)
    )
    assert code == 0, err
    assert github.writes()[0].path == f"/repos/{REPO}/issues/12/comments"


def test_comment_by_a_personal_token_matches_its_own_login(
    github: FakeGitHub, tmp_path: Path
) -> None:
    github.login = "release-bot"
    github.add_comment(7, plan_body(OTHER_FP))  # github-actions[bot]: not ours
    mine = github.add_comment(7, plan_body(OTHER_FP), login="release-bot")
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, _, err = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 0, err
    assert [w.path for w in github.writes()] == [f"/repos/{REPO}/issues/comments/{mine['id']}"]


def test_a_body_without_the_marker_gets_it(github: FakeGitHub, tmp_path: Path) -> None:
    (tmp_path / "plan.md").write_text("plan failed\n", encoding="utf-8")
    code, _, _ = ci(github, ["comment", "--body-file", "plan.md", "--pr", "7"], tmp_path)
    assert code == 0
    assert github.writes()[0].body["body"] == f"{MARKER}\nplan failed\n"


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"GITHUB_TOKEN": ""}, ["--pr", "7"], "GITHUB_TOKEN is not set"),
        ({"GITHUB_REPOSITORY": ""}, ["--pr", "7"], "GITHUB_REPOSITORY is not set"),
        ({"GITHUB_API_URL": "http://github.example.com"}, ["--pr", "7"], "plain http"),
        ({}, [], "no pull request number"),
    ],
)
def test_comment_configuration_errors(
    github: FakeGitHub, tmp_path: Path, env: dict[str, str], argv: list[str], message: str
) -> None:
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, _, err = ci(github, ["comment", "--body-file", "plan.md", *argv], tmp_path, **env)
    assert code == 1
    assert message in err
    assert not github.writes()


def test_a_refused_token_is_reported_without_the_token(github: FakeGitHub, tmp_path: Path) -> None:
    (tmp_path / "plan.md").write_text(plan_body(), encoding="utf-8")
    code, out, err = run_cli(
        ["ci", "comment", "--body-file", "plan.md", "--pr", "7"],
        tmp_path,
        gh_env(github, GITHUB_TOKEN="ghp_wrong-token-value"),
    )
    assert code == 1
    assert "401" in err and "Bad credentials" in err
    assert "ghp_wrong-token-value" not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["comment"],
        ["fingerprint"],
        ["comment", "--body-file", "x", "--pr", "zero"],
        ["fingerprint", "--from-file", "a", "--from-pr", "3"],
        ["issue", "--body-file", "x"],
        ["issue", "--title", "t"],
    ],
)
def test_usage_errors_exit_64(tmp_path: Path, argv: list[str]) -> None:
    code, _, err = run_cli(["ci", *argv], tmp_path)
    assert code == 64, err


# -- fingerprints --------------------------------------------------------------------------------


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[Path, str]:
    """A real plan of a small repository: plan.out, plan.md, plan.json; and its fingerprint."""
    fields = (
        ("application", "query_tag", None),
        ("owner", "result_tag", None),
        ("Runbook URL", "result_tag", "runbook_url"),
    )
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv", fields)},
        tables={
            "owners.csv": "application,owner,Runbook URL\nbilling,ana,https://wiki/b\n"
            "crm,bob,https://wiki/c\n"
        },
    )
    out_file = root / "plan.out"
    code, _, err = run_cli(["plan", "--no-refresh", "--out", str(out_file)], root)
    assert code == 0, err
    for fmt, name in (("markdown", "plan.md"), ("json", "plan.json")):
        code, text, err = run_cli(["show", str(out_file), "--format", fmt], root)
        assert code == 0, err
        (root / name).write_text(text, encoding="utf-8")
    fp = json.loads((root / "plan.json").read_text(encoding="utf-8"))["fingerprint"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    return root, fp


@pytest.mark.parametrize("name", ["plan.md", "plan.json", "plan.out"])
def test_fingerprint_round_trips_through_every_rendering(
    rendered: tuple[Path, str], name: str
) -> None:
    root, fp = rendered
    code, out, err = run_cli(["ci", "fingerprint", "--from-file", name], root)
    assert code == 0, err
    assert out == fp + "\n"


def test_fingerprint_of_the_markdown_equals_what_apply_expects(rendered: tuple[Path, str]) -> None:
    root, fp = rendered
    md = (root / "plan.md").read_text(encoding="utf-8")
    assert MARKER in md and f"`{fp}`" in md
    assert fingerprint_from_text(fit_comment(md)) == fp


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("### bpsync plan\n\nNo changes.\n", "no bpsync plan fingerprint"),
        ('{\n  "format_version": "1",\n  "tables": []\n}\n', "no bpsync plan fingerprint"),
        (None, "file not found"),
    ],
)
def test_fingerprint_missing_exits_1(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "plan.md").write_text(content, encoding="utf-8")
    code, out, err = run_cli(["ci", "fingerprint", "--from-file", "plan.md"], tmp_path)
    assert code == 1
    assert out == ""
    assert message in err


def test_a_csv_value_cannot_forge_the_fingerprint_line() -> None:
    # Values are escaped (`:` → `\:`), so a hostile cell never reads as the footer.
    forged = f"| + | <code>Fingerprint\\: `{OTHER_FP}`</code> |\n"
    assert fingerprint_from_text(plan_body(FP, extra=forged)) == FP
    assert fingerprint_from_text(forged) is None


SHA = "0123456789abcdef0123456789abcdef01234567"


def merged_pr(number: int, sha: str = SHA) -> dict[str, Any]:
    return {"number": number, "merged_at": "2025-01-02T03:04:05Z", "merge_commit_sha": sha}


def test_fingerprint_from_the_merged_prs_comment(github: FakeGitHub, tmp_path: Path) -> None:
    github.pulls[SHA] = [{"number": 3, "merged_at": None}, merged_pr(9)]
    github.add_comment(9, f"{MARKER}\nFingerprint: `{OTHER_FP}`", login="mallory")
    github.add_comment(9, plan_body(FP))
    code, out, err = ci(github, ["fingerprint", "--from-comment-of-commit", SHA], tmp_path)
    assert code == 0, err
    assert out == FP + "\n"
    assert "#9" in err
    assert not github.writes()


def test_a_comment_by_anyone_else_approves_nothing(github: FakeGitHub, tmp_path: Path) -> None:
    github.pulls[SHA] = [merged_pr(9)]
    github.add_comment(9, plan_body(FP), login="mallory")
    code, out, err = ci(github, ["fingerprint", "--from-comment-of-commit", SHA], tmp_path)
    assert code == 1
    assert out == ""
    assert "no plan comment by github-actions[bot] on pull request #9" in err
    assert "by hand" in err


def test_a_direct_push_approves_nothing(github: FakeGitHub, tmp_path: Path) -> None:
    code, out, err = ci(github, ["fingerprint", "--from-comment-of-commit", SHA], tmp_path)
    assert code == 1
    assert out == ""
    assert "not the merge of a pull request" in err


def test_a_failed_plan_comment_approves_nothing(github: FakeGitHub, tmp_path: Path) -> None:
    github.add_comment(4, f"{MARKER}\n### bpsync plan\n\n:x: No plan: validation failed.\n")
    code, out, err = ci(github, ["fingerprint", "--from-pr", "4"], tmp_path)
    assert (code, out) == (1, "")
    assert "shows no fingerprint" in err


# -- the drift issue -----------------------------------------------------------------------------

TITLE = "bpsync: drift detected"


def test_drift_issue_is_opened_then_updated_then_closed(github: FakeGitHub, tmp_path: Path) -> None:
    github.add_issue("Feature request", f"mentions {DRIFT_MARKER} in text", login="alice")
    github.add_issue("PR", f"{DRIFT_MARKER}", pull_request={"url": "x"})
    (tmp_path / "drift.md").write_text(plan_body(), encoding="utf-8")
    argv = ["issue", "--title", TITLE, "--body-file", "drift.md"]
    code, _, err = ci(github, argv, tmp_path)
    assert code == 0, err
    assert [(w.method, w.path) for w in github.writes()] == [("POST", f"/repos/{REPO}/issues")]
    ours = github.issues[-1]
    assert ours["body"].startswith(DRIFT_MARKER) and ours["title"] == TITLE

    code, _, err = ci(github, argv, tmp_path)
    assert code == 0, err
    assert github.writes()[-1].method == "PATCH"
    assert github.writes()[-1].path == f"/repos/{REPO}/issues/{ours['number']}"
    assert len(github.issues) == 3

    code, _, err = ci(github, ["issue", "--title", TITLE, "--close"], tmp_path)
    assert code == 0, err
    assert ours["state"] == "closed"
    assert [i["state"] for i in github.issues[:2]] == ["open", "open"]

    code, _, err = ci(github, ["issue", "--title", TITLE, "--close"], tmp_path)
    assert code == 0
    assert "nothing to close" in err


# -- the end-to-end rehearsal --------------------------------------------------------------------


def test_rehearsal_of_the_pr_and_merge_flow() -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rehearse_ci.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rehearsal passed" in proc.stdout
    # ~15 s idle with two environments; the bound catches a hang or a sleep, not a busy runner.
    assert elapsed < 60, f"the rehearsal took {elapsed:.1f}s"


# -- environments: one comment and one fingerprint per environment (SPEC §8) ---------------------

ENVIRONMENTS = "environments:\n  sandbox: {}\n  prod:\n    api: {region: eu}\n"


def env_plan_body(environment: str, fp: str) -> str:
    return (
        f"<!-- bpsync:plan:{environment} -->\n### bpsync plan — <code>{environment}</code>\n\n"
        f"Fingerprint: `{fp}`\n\n**No changes.**\n"
    )


def test_each_environment_has_its_own_sticky_comment(github: FakeGitHub, tmp_path: Path) -> None:
    root = make_repo(tmp_path, config=ENVIRONMENTS)
    for environment, fp in (("sandbox", FP), ("prod", OTHER_FP), ("sandbox", FP)):
        (root / "plan.md").write_text(env_plan_body(environment, fp), encoding="utf-8")
        argv = ["--env", environment, "ci", "comment", "--body-file", "plan.md", "--pr", "7"]
        code, _, err = run_cli(argv, root, gh_env(github))
        assert code == 0, err
    bodies = [c["body"] for c in github.comments[7]]
    assert bodies == [env_plan_body("sandbox", FP), env_plan_body("prod", OTHER_FP)]
    assert [w.method for w in github.writes()] == ["POST", "POST", "PATCH"]


def test_a_plan_of_one_environment_is_not_posted_as_another(
    github: FakeGitHub, tmp_path: Path
) -> None:
    root = make_repo(tmp_path, config=ENVIRONMENTS)
    (root / "plan.md").write_text(env_plan_body("sandbox", FP), encoding="utf-8")
    argv = ["--env", "prod", "ci", "comment", "--body-file", "plan.md", "--pr", "7"]
    code, _, err = run_cli(argv, root, gh_env(github))
    assert code == 64
    assert "plan of environment 'sandbox'" in err and "--env sandbox" in err
    assert not github.calls


def test_ci_comment_takes_the_environment_from_the_rendering(
    github: FakeGitHub, tmp_path: Path
) -> None:
    # The workflow's comment job runs the base branch, whose bpsync.yaml may not know an
    # environment the pull request adds: the rendering's marker names it.
    root = make_repo(tmp_path, config="manifests: ['tables/*.yaml']\n")
    (root / "plan.md").write_text(env_plan_body("eu", FP), encoding="utf-8")
    argv = ["ci", "comment", "--body-file", "plan.md", "--pr", "7"]
    code, _, err = run_cli(argv, root, gh_env(github))
    assert code == 0, err
    assert github.comments[7][0]["body"].startswith("<!-- bpsync:plan:eu -->")


def test_ci_comment_needs_the_environment_for_a_body_without_marker(
    github: FakeGitHub, tmp_path: Path
) -> None:
    root = make_repo(tmp_path, config=ENVIRONMENTS)
    (root / "plan.md").write_text("### bpsync plan\n\n:x: No plan\n", encoding="utf-8")
    code, _, err = run_cli(["ci", "comment", "--body-file", "plan.md"], root, gh_env(github))
    assert code == 64 and "sandbox, prod" in err
    assert not github.calls
    argv = ["--env", "prod", "ci", "comment", "--body-file", "plan.md", "--pr", "7"]
    code, _, err = run_cli(argv, root, gh_env(github))
    assert code == 0, err
    assert github.comments[7][0]["body"].startswith("<!-- bpsync:plan:prod -->\n### bpsync")


def test_the_fingerprint_comes_from_the_environments_own_comment(
    github: FakeGitHub, tmp_path: Path
) -> None:
    root = make_repo(tmp_path, config=ENVIRONMENTS)
    github.pulls[SHA] = [merged_pr(9)]
    github.add_comment(9, env_plan_body("sandbox", FP))
    github.add_comment(9, env_plan_body("prod", OTHER_FP))
    for environment, fp in (("sandbox", FP), ("prod", OTHER_FP)):
        argv = ["--env", environment, "ci", "fingerprint", "--from-comment-of-commit", SHA]
        code, out, err = run_cli(argv, root, gh_env(github))
        assert code == 0, err
        assert out == fp + "\n"
        assert f"{environment} plan comment" in err
    # An environment that was never planned on this pull request approves nothing.
    root2 = make_repo(tmp_path / "other", config=ENVIRONMENTS + "  eu: {}\n")
    argv = ["--env", "eu", "ci", "fingerprint", "--from-comment-of-commit", SHA]
    code, out, err = run_cli(argv, root2, gh_env(github))
    assert code == 1 and out == ""
    assert "no eu plan comment" in err


def test_ci_environments_prints_a_job_matrix(tmp_path: Path) -> None:
    root = make_repo(tmp_path, config=ENVIRONMENTS)
    code, out, err = run_cli(["ci", "environments"], root)
    assert code == 0, err
    assert json.loads(out) == ["sandbox", "prod"]
    plain = make_repo(tmp_path / "plain")
    code, out, _ = run_cli(["ci", "environments"], plain)
    assert code == 0 and json.loads(out) == [""]


def test_ci_environments_leaves_out_a_rehearsal_emulator(tmp_path: Path) -> None:
    config = ENVIRONMENTS + "  emulator:\n    api: {base_url: 'http://127.0.0.1:8471'}\n"
    root = make_repo(tmp_path, config=config)
    env = {"BIGPANDA_API_URL": "http://127.0.0.1:9"}  # a job's override changes nothing
    assert json.loads(run_cli(["ci", "environments"], root, env)[1]) == ["sandbox", "prod"]
    code, out, _ = run_cli(["ci", "environments", "--all"], root)
    assert code == 0 and json.loads(out) == ["sandbox", "prod", "emulator"]


def test_each_environment_has_its_own_drift_issue(github: FakeGitHub, tmp_path: Path) -> None:
    root = make_repo(tmp_path, config=ENVIRONMENTS)
    (root / "drift.md").write_text("drift\n", encoding="utf-8")
    for environment in ("sandbox", "prod", "sandbox"):
        argv = ["--env", environment, "ci", "issue", "--title", TITLE, "--body-file", "drift.md"]
        code, _, err = run_cli(argv, root, gh_env(github))
        assert code == 0, err
    assert [i["body"].splitlines()[0] for i in github.issues] == [
        "<!-- bpsync:drift:sandbox -->",
        "<!-- bpsync:drift:prod -->",
    ]
    argv = ["--env", "prod", "ci", "issue", "--title", TITLE, "--close"]
    assert run_cli(argv, root, gh_env(github))[0] == 0
    assert [i["state"] for i in github.issues] == ["open", "closed"]
