"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # Golden files (tests/golden/<case>/plan.*) are rewritten from the current renderers
    # instead of compared; review the diff like code (see tests/golden_util.py).
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden files from the current output instead of comparing",
    )
