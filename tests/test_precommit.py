"""The pre-commit hooks of .pre-commit-hooks.yaml, run by pre-commit itself (`try-repo`) on a
scratch table repository, as a user's `git commit` would run them.

`try-repo` installs the hooks from this repository's HEAD commit into a fresh environment (pip,
from the configured package index), so uncommitted changes to the hooks are not what it runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / ".pre-commit-hooks.yaml"
_NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution",
                   "No matching distribution found")  # fmt: skip


def hooks() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    assert isinstance(doc, list)
    return {h["id"]: h for h in doc}


def test_hooks_run_bpsync_once_on_the_whole_project() -> None:
    """bpsync checks a project (manifests, their tables, rules across manifests), not single
    files, and takes no file arguments: pre-commit must pass none."""
    found = hooks()
    assert set(found) == {"bpsync-validate", "bpsync-fmt"}
    assert found["bpsync-validate"]["entry"] == "bpsync validate"
    assert found["bpsync-fmt"]["entry"] == "bpsync fmt"
    for hook in found.values():
        assert hook["language"] == "python"
        assert hook["pass_filenames"] is False
        assert hook["name"] and hook["description"]


@pytest.mark.parametrize(
    ("path", "runs"),
    [("tables/service-owners.csv", True), ("tables/service-owners.yaml", True),
     ("bpsync.yaml", True), ("sub/dir/hosts.yml", True), ("tables/big.csv.gz", True),
     ("README.md", False), ("bpsync/cli.py", False), ("tables/notes.txt", False)],
)  # fmt: skip
def test_hooks_run_when_a_table_or_manifest_is_staged(path: str, runs: bool) -> None:
    import re

    for hook in hooks().values():
        assert bool(re.search(hook["files"], path)) is runs, (hook["id"], path)


@pytest.fixture
def table_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git repository holding a copy of the shipped tables, committed."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "tables-repo"
    repo.mkdir()
    shutil.copy2(ROOT / "bpsync.yaml", repo / "bpsync.yaml")
    shutil.copytree(ROOT / "tables", repo / "tables")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BIGPANDA_", "GIT_"))},
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "NO_COLOR": "1",
    }  # fmt: skip
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "tables"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def try_repo(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Every hook of this repository, on every file of REPO."""
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "--all-files", "--color",
         "never"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(e in output for e in _NETWORK_ERRORS):
        pytest.skip(f"the hook environment could not be installed: {output.strip()[-300:]}")
    return proc


@pytest.mark.slow
def test_pre_commit_try_repo_formats_and_validates(table_repo: tuple[Path, dict[str, str]]) -> None:
    pytest.importorskip("pre_commit", reason="pre-commit is not installed (pip install pre-commit)")
    repo, env = table_repo
    owners = repo / "tables" / "service-owners.csv"
    canonical = owners.read_bytes()
    owners.write_bytes(canonical.replace(b"\n", b"\r\n"))  # valid, but not canonical
    hosts = repo / "tables" / "host-cmdb.csv"
    good_hosts = hosts.read_bytes()
    lines = good_hosts.splitlines(keepends=True)
    hosts.write_bytes(good_hosts + lines[1])  # a duplicate key: invalid

    proc = try_repo(repo, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "bpsync validate" in out and "bpsync fmt" in out
    # validate names the file and both lines of the duplicate key.
    assert f"tables/host-cmdb.csv:{len(lines) + 1}" in out, out
    # fmt rewrote the CRLF table, and pre-commit says so (the user then stages it).
    assert "files were modified by this hook" in out, out
    assert owners.read_bytes() == canonical

    hosts.write_bytes(good_hosts)
    proc = try_repo(repo, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Passed") == 2, proc.stdout
