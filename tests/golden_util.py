"""Golden files: expected renderings kept in tests/golden/<case>/, reviewed like code.

`pytest --update-golden` rewrites them from the current output (the option is declared in
conftest.py); without it a difference fails the test with a unified diff.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def assert_golden(config: pytest.Config, case: str, name: str, actual: str) -> None:
    path = GOLDEN_DIR / case / name
    if config.getoption("--update-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8", newline="\n")
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; run `pytest --update-golden` and review it")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"golden/{case}/{name}",
                "actual",
            )
        )
        pytest.fail(
            f"{case}/{name} differs from its golden file "
            f"(`pytest --update-golden` if intended):\n{diff}",
            pytrace=False,
        )
