"""SPEC §3's PATCH rule: a v2.1 map_name change plans as replace; after every PATCH, a value
BigPanda's answer does not hold fails the table and state keeps the old value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import fast_client_options, make_repo, manifest_yaml, run_cli

from bpsync.applier import Applier, StateStore
from bpsync.bigpanda.client import BigPandaClient
from bpsync.config import load_config
from bpsync.emulator import Emulator
from bpsync.manifest import load_manifests
from bpsync.planner import make_plan
from bpsync.state import open_backend

TOKEN = "tok-patch-5d"
V21 = "api:\n  version: v2.1\nmanifests: ['tables/*.yaml']\n"
CSV = "application,owner,team\nbilling,ana,ops\n"


def bp(root: Path, emu: Emulator, *argv: str) -> tuple[int, str, str]:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    return run_cli(argv, root, env, client_options=fast_client_options())


def state(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / ".bpsync" / "state.json").read_text()))


def repo(tmp_path: Path, map_name: str = "Owners", extra: str = "") -> Path:
    return make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv", map_name=map_name, extra=extra)},
        tables={"owners.csv": CSV},
        config=V21,
    )


def rename(root: Path, new: str) -> None:
    path = root / "tables" / "owners.yaml"
    path.write_text(path.read_text().replace("map_name: Owners", f"map_name: {new}"))


def test_a_v21_rename_plans_as_replace_saying_why_and_apply_moves_the_table(
    tmp_path: Path, emu: Emulator
) -> None:
    root = repo(tmp_path)
    assert bp(root, emu, "apply", "--auto-approve")[0] == 0
    old = state(root)["tables"]["owners"]["enrichment_id"]
    rename(root, "Service owners")
    code, out, _ = bp(root, emu, "plan", "--format", "json")
    table = json.loads(out)["tables"][0]
    assert table["action"] == "replace"
    assert any("config.name" in n and "new enrichment" in n for n in table["notes"]), table
    code, out, _ = bp(root, emu, "plan")
    assert "config.name" in out
    code, out, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    new = state(root)["tables"]["owners"]["enrichment_id"]
    assert new != old
    assert emu.enrichment(new)["config"]["name"] == "Service owners"  # type: ignore[index]
    assert emu.enrichment(old)["active"] is False  # type: ignore[index]
    assert bp(root, emu, "plan", "--detailed-exitcode")[0] == 0


def test_a_v1_rename_stays_in_place(tmp_path: Path, emu: Emulator) -> None:
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": CSV},
    )
    assert bp(root, emu, "apply", "--auto-approve")[0] == 0
    rename(root, "Service owners")
    _, out, _ = bp(root, emu, "plan", "--format", "json")
    assert json.loads(out)["tables"][0]["action"] == "update-in-place"


class IgnoringClient:
    """A BigPanda that accepts every PATCH and changes nothing (as v2.1 does with keys it
    does not apply)."""

    def __init__(self, inner: BigPandaClient) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update_enrichment(self, enrichment_id: str, **changes: Any) -> Any:
        return self.inner.get_enrichment(enrichment_id)


def test_a_patched_value_that_did_not_take_fails_the_table_and_state_keeps_the_old(
    tmp_path: Path, emu: Emulator
) -> None:
    root = repo(tmp_path, extra="description: before\n")
    assert bp(root, emu, "apply", "--auto-approve")[0] == 0
    path = root / "tables" / "owners.yaml"
    path.write_text(path.read_text().replace("description: before", "description: after"))
    config = load_config(root, {})
    manifests, _ = load_manifests(config)
    backend = open_backend(config)
    plan = make_plan(config, manifests, backend.read(), backend, now="now")
    assert plan.tables[0].action == "update-in-place"
    with BigPandaClient(emu.url, TOKEN, "v2.1", **fast_client_options()) as inner:
        store = StateStore(backend, backend.read(), lambda point: None)
        notes: list[str] = []
        applier = Applier(IgnoringClient(inner), store, root, "v2.1", notes.append)
        result = applier.apply(plan)
    assert [r.ok for r in result.results] == [False]
    message = result.results[0].message
    assert "did not take" in message and '"after"' in message and '"before"' in message
    assert state(root)["tables"]["owners"]["schema"]["description"] == "before"
