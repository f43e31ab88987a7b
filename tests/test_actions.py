"""The composite actions of .github/actions, run step by step as the GitHub runner runs them
(tests/action_runner.py), on a scratch table repository, against the emulator on 127.0.0.1:
plan a change, apply it by fingerprint (state committed and pushed), refuse another
fingerprint, and find drift.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from action_runner import ROOT, run_action

from bpsync.emulator import Emulator

TOKEN = "actions-test-token-9f3a"
FP = r"sha256:[0-9a-f]{64}"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(port=0, job_seconds=0.05, token=TOKEN) as e:
        yield e


@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BIGPANDA_", "GIT"))},
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(tmp_path),  # no identity: the apply action sets the bot's
    }  # fmt: skip


def git(repo: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def workspace(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """A clone of a table repository (the shipped tables in `project/`), with an origin to
    push the state to, as actions/checkout leaves it."""
    seed = tmp_path / "seed"
    (seed / "project").mkdir(parents=True)
    shutil.copy2(ROOT / "bpsync.yaml", seed / "project" / "bpsync.yaml")
    shutil.copytree(ROOT / "tables", seed / "project" / "tables")
    git(seed, git_env, "init", "-q", "-b", "main")
    git(seed, git_env, "add", "-A")
    git(seed, git_env, "-c", "user.name=t", "-c", "user.email=t@example.invalid",
        "commit", "-q", "-m", "tables")  # fmt: skip
    origin = tmp_path / "origin.git"
    git(tmp_path, git_env, "clone", "-q", "--bare", str(seed), str(origin))
    ws = tmp_path / "workspace"
    git(tmp_path, git_env, "clone", "-q", str(origin), str(ws))
    return ws


def test_plan_action_plans_and_leaves_its_files(workspace: Path, git_env: dict[str, str]) -> None:
    run = run_action("plan", workspace=workspace, env=git_env,
                     inputs={"working-directory": "project"})  # fmt: skip
    assert not run.failed, run.log
    assert run.outputs["exit-code"] == "2" and run.outputs["has-changes"] == "true"
    fingerprint = run.outputs["fingerprint"]
    assert re.fullmatch(FP, fingerprint)
    project = workspace / "project"
    plan = json.loads((project / "plan.json").read_text(encoding="utf-8"))
    assert plan["fingerprint"] == fingerprint
    assert f"Fingerprint: `{fingerprint}`" in (project / "plan.md").read_text(encoding="utf-8")
    assert "### bpsync plan" in run.summary
    (upload,) = run.uses[1:]
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["with"]["name"] == "bpsync-plan"
    assert upload["with"]["path"].split() == [f"project/{f}" for f in
                                              ("plan.out", "plan.json", "plan.md")]  # fmt: skip
    assert run.step("Upsert the plan comment").outcome == "skipped"  # no token given


def test_plan_action_fails_on_invalid_tables(workspace: Path, git_env: dict[str, str]) -> None:
    csv = workspace / "project" / "tables" / "service-owners.csv"
    lines = csv.read_text(encoding="utf-8").splitlines(keepends=True)
    csv.write_text("".join(lines) + lines[1], encoding="utf-8")  # a duplicate key
    run = run_action("plan", workspace=workspace, env=git_env,
                     inputs={"working-directory": "project"})  # fmt: skip
    assert run.failed
    assert run.outputs["exit-code"] == "1"
    assert run.outputs["fingerprint"] == "" and run.outputs["has-changes"] == ""
    validate = run.step("Validate")
    assert "::error file=tables/service-owners.csv,line=" in validate.stdout
    assert run.step("Plan").outcome == "skipped"
    assert ":x: No plan" in run.summary
    assert [u["uses"] for u in run.uses] == ["actions/setup-python@v5"]  # no artifact


def test_apply_action_applies_the_reviewed_plan_and_pushes_the_state(
    workspace: Path, git_env: dict[str, str], emu: Emulator
) -> None:
    plan = run_action("plan", workspace=workspace, env=git_env,
                      inputs={"working-directory": "project", "artifact-name": ""})  # fmt: skip
    fingerprint = plan.outputs["fingerprint"]
    for name in ("plan.out", "plan.json", "plan.md"):
        (workspace / "project" / name).unlink()
    apply_inputs = {
        "working-directory": "project",
        "fingerprint": fingerprint,
        "bigpanda-token": TOKEN,
        "api-url": emu.url,
    }
    run = run_action("apply", workspace=workspace, env=git_env, inputs=apply_inputs)
    assert not run.failed, run.log
    assert run.outputs == {"fingerprint": fingerprint, "has-changes": "true", "exit-code": "0"}
    assert ":white_check_mark: Applied." in run.summary
    assert run.step("Show a fresh plan to review").outcome == "skipped"
    # The state commit reached origin/main, by the bot, with [skip ci].
    git(workspace, git_env, "fetch", "-q", "origin")
    log = git(workspace, git_env, "log", "-1", "--format=%an|%s", "origin/main")
    assert log.startswith("github-actions[bot]|bpsync: state after apply of ")
    assert "[skip ci]" in log
    files = git(workspace, git_env, "ls-tree", "-r", "--name-only", "origin/main")
    assert "project/.bpsync/state.json" in files
    assert TOKEN not in run.log + run.summary
    assert TOKEN not in (workspace / "project" / "apply.log").read_text(encoding="utf-8")

    # The same plan again: nothing to do, said so in the outputs.
    current = plan_fingerprint(workspace, git_env)
    again = run_action("apply", workspace=workspace, env=git_env,
                       inputs={**apply_inputs, "fingerprint": current})  # fmt: skip
    assert not again.failed, again.log
    assert again.outputs["has-changes"] == "false" and again.outputs["exit-code"] == "0"
    assert "State unchanged." in again.step("Commit the state").stdout

    # Drift: in sync now; then a deactivated enrichment is drift, and fails the action.
    drift_inputs = {"working-directory": "project", "bigpanda-token": TOKEN, "api-url": emu.url}
    calm = run_action("drift", workspace=workspace, env=git_env, inputs=drift_inputs)
    assert not calm.failed, calm.log
    assert calm.outputs["exit-code"] == "0" and calm.outputs["has-changes"] == "false"
    csv = workspace / "project" / "tables" / "service-owners.csv"
    with csv.open("a", encoding="utf-8") as f:
        f.write("unapplied-app,Someone,team-x,https://wiki.example.com/x\n")
    drift = run_action("drift", workspace=workspace, env=git_env, inputs=drift_inputs)
    assert drift.failed
    assert drift.outputs["exit-code"] == "2" and drift.outputs["has-changes"] == "true"
    assert re.fullmatch(FP, drift.outputs["fingerprint"])
    assert drift.step("Fail on drift").outcome == "failure"
    assert drift.step("Open or update the drift issue").outcome == "skipped"  # no token
    assert TOKEN not in drift.log + drift.summary
    relaxed = run_action("drift", workspace=workspace, env=git_env,
                         inputs={**drift_inputs, "fail-on-drift": "false"})  # fmt: skip
    assert not relaxed.failed and relaxed.outputs["has-changes"] == "true"


def plan_fingerprint(workspace: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bpsync", "--no-color", "plan", "--no-refresh", "--format", "json"],
                          cwd=workspace / "project", env=run_env(env), capture_output=True,
                          text=True, check=True)  # fmt: skip
    return str(json.loads(proc.stdout)["fingerprint"])


def run_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def test_apply_action_refuses_another_fingerprint(
    workspace: Path, git_env: dict[str, str], emu: Emulator
) -> None:
    wrong = "sha256:" + "0" * 64
    run = run_action("apply", workspace=workspace, env=git_env, inputs={
        "working-directory": "project", "fingerprint": wrong, "bigpanda-token": TOKEN,
        "api-url": emu.url})  # fmt: skip
    assert run.failed
    assert run.outputs["exit-code"] == "1" and run.outputs["fingerprint"] == wrong
    assert ":x: The apply failed or was refused" in run.summary
    assert run.step("Show a fresh plan to review").outcome == "success"
    assert "run the workflow by hand" in run.summary
    assert not [r for r in emu.requests if r.path.endswith("/map")], "something was uploaded"
    assert TOKEN not in run.log + run.summary


def test_apply_action_refuses_what_is_not_a_fingerprint(
    workspace: Path, git_env: dict[str, str]
) -> None:
    run = run_action("apply", workspace=workspace, env=git_env, inputs={
        "working-directory": "project", "fingerprint": "sha256:abc; rm -rf /"})  # fmt: skip
    assert run.failed
    assert "not a plan fingerprint" in run.step("Find the approved fingerprint").stdout
    assert run.step("Apply").outcome == "skipped"
    assert ":no_entry: Refused: no approved fingerprint." in run.summary


def test_actions_refuse_a_checkout_without_lfs_objects(
    workspace: Path, git_env: dict[str, str]
) -> None:
    """`lfs: true` with no git-lfs on the runner (or pointers left) fails before bpsync runs."""
    run = run_action("plan", workspace=workspace, env=git_env,
                     inputs={"working-directory": "project", "lfs": "true"})  # fmt: skip
    check = run.step("Check the Git LFS checkout")
    if shutil.which("git-lfs") is None:
        assert check.outcome == "failure" and "git-lfs is not installed" in check.stdout
        assert run.step("Validate").outcome == "skipped"
    else:
        assert check.outcome == "success"  # no LFS files at all: nothing missing
