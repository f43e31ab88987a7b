"""Shared pytest configuration and fixtures.

`emu`: the BigPanda emulator on 127.0.0.1 (port 0), fresh per test. A test module changes
its settings with a module-level `EMULATOR_OPTIONS = {...}` (e.g. `job_seconds`, `token`).
The in-process CLI runner and the fast client options are plain functions in helpers.py
(`run_cli`, `fast_client_options`), because module-level wrappers call them with arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bpsync.emulator import Emulator

_EMULATOR_DEFAULTS: dict[str, Any] = {"port": 0, "job_seconds": 0.05, "rate_limit": False}


@pytest.fixture
def emu(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    options = {**_EMULATOR_DEFAULTS, **getattr(request.module, "EMULATOR_OPTIONS", {})}
    with Emulator(**options) as emulator:
        yield emulator


def pytest_addoption(parser: pytest.Parser) -> None:
    # Golden files (tests/golden/<case>/plan.*) are rewritten from the current renderers
    # instead of compared; review the diff like code (see tests/golden_util.py).
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden files from the current output instead of comparing",
    )
