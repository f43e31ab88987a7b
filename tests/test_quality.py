"""The project's own promises: lint and types clean, docs cover every command and option."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpsync.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "bpsync", "tests", "benchmarks", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([_tool("mypy"), "bpsync"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                out[full] = sub
                out.update(_subcommands(sub, full + " "))
    return out


def test_every_command_and_option_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = []
    for name, sub in _subcommands(build_parser()).items():
        if f"bpsync {name}" not in readme:
            missing.append(f"command `bpsync {name}`")
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and opt not in readme:
                    missing.append(f"option {opt} of `bpsync {name}`")
    for opt in ("-C", "--no-color", "--debug", "--version"):
        if opt not in readme:
            missing.append(f"global option {opt}")
    assert not missing, "undocumented in README.md: " + ", ".join(missing)


def test_the_readme_quick_start_matches_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert test_command in readme and test_command in ci


@pytest.mark.parametrize("name", ["config", "manifest", "validate-result", "apply-result"])
def test_the_shipped_schemas_equal_the_package_copies(name: str) -> None:
    top = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    packaged = json.loads((ROOT / "bpsync" / "schemas" / f"{name}.schema.json").read_text())
    assert top == packaged, f"schemas/{name}.schema.json and its copy in bpsync/schemas differ"


def test_the_shipped_project_plans_offline() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bpsync", "plan", "--no-refresh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "Plan: 3 tables to change" in result.stdout
