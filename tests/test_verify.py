"""`apply --verify` (SPEC §7, v2.1): read each table back after its job is done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import fast_client_options, make_repo, manifest_yaml, run_cli

from bpsync.emulator import Emulator

TOKEN = "tok-verify-8a"
V21 = "api:\n  version: v2.1\nmanifests: ['tables/*.yaml']\n"
CSV = "application,owner,team\n" + "".join(f"app{i},owner{i},team{i}\n" for i in range(10))


def bp(root: Path, emu: Emulator, *argv: str) -> tuple[int, str, str]:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    return run_cli(argv, root, env, client_options=fast_client_options())


def repo(tmp_path: Path, config: str = V21) -> Path:
    return make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": CSV},
        config=config,
    )


def state(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / ".bpsync" / "state.json").read_text()))


def test_verify_reads_the_table_back_and_passes(tmp_path: Path, emu: Emulator) -> None:
    root = repo(tmp_path)
    # Rows in another order than uploaded still verify: BigPanda's order is not documented.
    emu.faults.cap_per_page(3)
    code, out, err = bp(root, emu, "apply", "--auto-approve", "--verify")
    assert code == 0, out + err
    assert "verified: BigPanda holds the 10 rows uploaded" in err
    assert state(root)["tables"]["owners"]["rows"] == 10


def test_a_table_that_differs_after_done_fails_and_state_does_not_move(
    tmp_path: Path, emu: Emulator
) -> None:
    root = repo(tmp_path)
    assert bp(root, emu, "apply", "--auto-approve")[0] == 0
    before = state(root)["tables"]["owners"]
    path = root / "tables" / "owners.csv"
    path.write_text(CSV + "app10,owner10,team10\n")
    emu.faults.cap_per_page(3)
    emu.faults.move_total_between_pages(times=1)  # someone writes while the job finishes
    code, out, err = bp(root, emu, "apply", "--auto-approve", "--verify", "--refresh-rows", "0")
    assert code == 1, out + err
    assert "owners" in err and "verify failed" in err
    after = state(root)["tables"]["owners"]
    assert after["sha256"] == before["sha256"] and after["pending"] is None
    assert after["rows"] == 10


def test_verify_on_v1_is_refused_before_anything(tmp_path: Path, emu: Emulator) -> None:
    root = repo(tmp_path, config="manifests: ['tables/*.yaml']\n")
    code, _, err = bp(root, emu, "apply", "--auto-approve", "--verify")
    assert code == 1 and "--verify" in err and "v2.1" in err
    assert emu.requests == []
