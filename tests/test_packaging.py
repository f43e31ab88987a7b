"""The wheel a user installs: built from this tree as `pip install bpsync` would get it, with
the JSON Schemas and py.typed inside, the LICENSE, and the one version of bpsync/__init__.py.

The build runs pip (`pip wheel . --no-deps`) with its usual isolated build environment, whose
setuptools comes from the configured package index.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import bpsync

ROOT = Path(__file__).resolve().parent.parent
_NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution",
                   "No matching distribution found")  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    # A copy without build/ or *.egg-info/ of an earlier build: the wheel is made from the
    # sources alone.
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "bpsync", src / "bpsync",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(e in output for e in _NETWORK_ERRORS):
        pytest.skip(f"the build backend could not be installed: {output.strip()[-300:]}")
    assert proc.returncode == 0, output
    (built,) = out.glob("bpsync-*.whl")
    return built


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode("utf-8"))


def test_the_version_is_written_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", bpsync.__version__)


def test_wheel_holds_schemas_typing_marker_and_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = sorted(p.name for p in (ROOT / "bpsync" / "schemas").glob("*.json"))
        assert shipped, "no schemas in bpsync/schemas"
        for name in shipped:
            inside = z.read(f"bpsync/schemas/{name}")
            assert inside == (ROOT / "bpsync" / "schemas" / name).read_bytes()
        assert "bpsync/py.typed" in names
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
        assert not any(n.startswith(("tests/", "scripts/", "benchmarks/")) for n in names)


def test_wheel_metadata(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Name"] == "bpsync"
    assert meta["Version"] == bpsync.__version__
    assert wheel.name.startswith(f"bpsync-{bpsync.__version__}-py3-none-any")
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    with zipfile.ZipFile(wheel) as z:
        (entry,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "bpsync = bpsync.__main__:main" in z.read(entry).decode("utf-8")


def test_license_is_mit_and_named_in_pyproject() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 bpsync contributors" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_changelog_has_an_unreleased_section_and_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "Keep a Changelog" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased"
    assert bpsync.__version__ in headings
