"""Environments at work (SPEC §8, §5): `--env`, renderings that name their environment, a
fingerprint bound to environment and endpoint, state bound to its endpoint, and the stop when
a refresh finds none of the enrichments state records.

HTTP runs against the emulator on 127.0.0.1; "refused before sending anything" is asserted
on the emulator's request log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import OWNERS_HEADER, fast_client_options, make_repo, manifest_yaml, run_cli

from bpsync.emulator import Emulator

TWO = """\
manifests: ['tables/*.yaml']
environments:
  sandbox:
    api: {token_env: SANDBOX_TOKEN}
  prod:
    api: {region: eu, version: v2.1, token_env: PROD_TOKEN}
"""
OWNERS_CSV = OWNERS_HEADER + "billing,ana,ops\n"


def project(tmp_path: Path, config: str = TWO) -> Path:
    return make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": OWNERS_CSV},
        config=config,
    )


# -- selecting an environment ------------------------------------------------------------------


def test_a_command_that_reads_state_needs_an_environment(tmp_path: Path) -> None:
    root = project(tmp_path)
    code, out, err = run_cli(["plan"], root)
    assert code == 64, err
    assert "--env" in err and "sandbox, prod" in err
    assert out == ""


def test_an_unknown_environment_is_a_usage_error_listing_the_names(tmp_path: Path) -> None:
    root = project(tmp_path)
    code, _, err = run_cli(["--env", "staging", "plan"], root)
    assert code == 64
    assert "unknown environment 'staging'" in err and "sandbox, prod" in err
    code, _, err = run_cli(["plan"], root, {"BPSYNC_ENV": "stage"})
    assert code == 64 and "BPSYNC_ENV=stage" in err


def test_an_environment_where_none_are_defined_is_a_usage_error(tmp_path: Path) -> None:
    root = project(tmp_path, "manifests: ['tables/*.yaml']\n")
    code, _, err = run_cli(["--env", "prod", "plan"], root)
    assert code == 64
    assert "defines no environments" in err
    assert not (root / ".bpsync").exists()


def test_validate_fmt_and_show_need_no_environment(tmp_path: Path) -> None:
    root = project(tmp_path)
    assert run_cli(["validate"], root)[0] == 0
    assert run_cli(["fmt", "--check"], root)[0] == 0
    code, _, err = run_cli(["--env", "sandbox", "plan", "--out", "plan.out"], root)
    assert code == 0, err
    code, out, err = run_cli(["show", "plan.out"], root)
    assert code == 0, err
    assert out.startswith("Environment: sandbox at https://api.bigpanda.io (API v1)")


# -- renderings and fingerprint ----------------------------------------------------------------


def test_every_rendering_names_its_environment(tmp_path: Path) -> None:
    root = project(tmp_path)
    env = {"BPSYNC_ENV": "prod"}
    code, text, err = run_cli(["plan", "--no-refresh"], root, env)
    assert code == 0, err
    assert text.splitlines()[0] == "Environment: prod at https://eu-api.bigpanda.io (API v2.1)"
    _, md, _ = run_cli(["plan", "--format", "markdown"], root, env)
    head = ["<!-- bpsync:plan:prod -->", "### bpsync plan — <code>prod</code>"]
    assert md.splitlines()[:2] == head
    _, raw, _ = run_cli(["plan", "--format", "json"], root, env)
    assert json.loads(raw)["environment"] == "prod"


def test_without_environments_renderings_are_unchanged(tmp_path: Path) -> None:
    root = project(tmp_path, "manifests: ['tables/*.yaml']\n")
    _, text, _ = run_cli(["plan"], root)
    assert not text.startswith("Environment")
    _, md, _ = run_cli(["plan", "--format", "markdown"], root)
    assert md.splitlines()[:2] == ["<!-- bpsync:plan -->", "### bpsync plan"]
    _, raw, _ = run_cli(["plan", "--format", "json"], root)
    assert json.loads(raw)["environment"] is None


def fingerprint(root: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    code, raw, err = run_cli([*argv, "plan", "--format", "json"], root, env)
    assert code == 0, err
    return str(json.loads(raw)["fingerprint"])


def test_the_fingerprint_covers_environment_and_endpoint(tmp_path: Path) -> None:
    root = project(tmp_path)
    sandbox = fingerprint(root, "--env", "sandbox")
    assert fingerprint(root, "--env", "sandbox") == sandbox  # stable
    assert fingerprint(root, "--env", "prod") != sandbox
    moved = fingerprint(root, "--env", "sandbox", env={"BIGPANDA_API_URL": "http://127.0.0.1:9"})
    assert moved != sandbox


def test_a_fingerprint_reviewed_for_one_environment_is_refused_for_another(
    tmp_path: Path, emu: Emulator
) -> None:
    root = project(tmp_path)
    sandbox = fingerprint(root, "--env", "sandbox")
    env = {"PROD_TOKEN": "t", "BIGPANDA_API_URL": emu.url}
    argv = ["--env", "prod", "apply", "--auto-approve", "--expect-fingerprint", sandbox]
    code, _, err = run_cli(argv, root, env, client_options=fast_client_options())
    assert code == 1
    assert "fingerprint mismatch" in err
    assert emu.requests == []


def test_a_plan_file_made_for_one_environment_is_refused_for_another(
    tmp_path: Path, emu: Emulator
) -> None:
    root = project(tmp_path)
    assert run_cli(["--env", "sandbox", "plan", "--out", "plan.out"], root)[0] == 0
    env = {"PROD_TOKEN": "t", "BIGPANDA_API_URL": emu.url}
    code, _, err = run_cli(["--env", "prod", "apply", "plan.out"], root, env)
    assert code == 1
    assert "made for environment 'sandbox'" in err and "runs for environment 'prod'" in err
    assert emu.requests == []


# -- state bound to its endpoint (SPEC §5) -----------------------------------------------------

PLAIN = "manifests: ['tables/*.yaml']\n"
TOKEN = "emu-token-never-printed"


def bp(root: Path, emu: Emulator, *argv: str, **env: str) -> tuple[int, str, str]:
    environ = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN, **env}
    code, out, err = run_cli(argv, root, environ, client_options=fast_client_options())
    assert TOKEN not in out + err
    return code, out, err


def state_file(root: Path, environment: str | None = None) -> Path:
    state_dir = root / ".bpsync" / environment if environment else root / ".bpsync"
    return state_dir / "state.json"


def state_of(root: Path, environment: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(state_file(root, environment).read_text())
    return data


def applied(tmp_path: Path, emu: Emulator, config: str = PLAIN) -> Path:
    root = project(tmp_path, config)
    code, _, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 0, err
    return root


@pytest.fixture
def other_emu() -> Iterator[Emulator]:
    with Emulator(port=0, job_seconds=0.05, rate_limit=False) as emulator:
        yield emulator


def test_apply_records_the_endpoint_in_state(tmp_path: Path, emu: Emulator) -> None:
    root = applied(tmp_path, emu)
    assert state_of(root)["endpoint"] == {"base_url": emu.url, "api_version": "v1"}


def test_state_of_another_endpoint_is_refused_before_any_request(
    tmp_path: Path, emu: Emulator, other_emu: Emulator
) -> None:
    root = applied(tmp_path, emu)
    before = state_file(root).read_bytes()
    for argv in (["plan"], ["apply", "--auto-approve"], ["import", "owners", "x"]):
        code, _, err = bp(root, other_emu, *argv)
        assert code == 1, (argv, err)
        assert f"belongs to {emu.url} (API v1)" in err
        assert f"against {other_emu.url} (API v1)" in err
        assert "unset BIGPANDA_API_URL" in err and "bpsync state rebind" in err
    code, _, err = bp(root, other_emu, "plan", "--no-refresh")
    assert code == 1 and "belongs to" in err  # it would plan against the wrong state
    assert other_emu.requests == []
    assert state_file(root).read_bytes() == before


def test_each_environment_keeps_its_own_bound_state(
    tmp_path: Path, emu: Emulator, other_emu: Emulator
) -> None:
    config = (
        "manifests: ['tables/*.yaml']\nenvironments:\n"
        f"  sandbox:\n    api: {{base_url: '{emu.url}'}}\n"
        f"  prod:\n    api: {{base_url: '{other_emu.url}', token_env: PROD_TOKEN}}\n"
    )
    root = project(tmp_path, config)
    env = {"BIGPANDA_TOKEN": TOKEN, "PROD_TOKEN": TOKEN}
    for name in ("sandbox", "prod"):
        code, _, err = run_cli(
            ["--env", name, "apply", "--auto-approve"],
            root,
            env,
            client_options=fast_client_options(),
        )
        assert code == 0, err
    assert state_of(root, "sandbox")["endpoint"]["base_url"] == emu.url
    assert state_of(root, "prod")["endpoint"]["base_url"] == other_emu.url
    ids = {state_of(root, n)["tables"]["owners"]["enrichment_id"] for n in ("sandbox", "prod")}
    assert len(ids) == 2
    # Pointing the prod environment at the sandbox emulator mixes nothing.
    emu.clear_requests()
    code, _, err = run_cli(["--env", "prod", "plan"], root, {**env, "BIGPANDA_API_URL": emu.url})
    assert code == 1
    assert "environment 'prod'" in err and "--env: sandbox, prod" in err
    assert emu.requests == []


def test_state_from_before_endpoints_adopts_the_first_one_and_says_so_once(
    tmp_path: Path, emu: Emulator
) -> None:
    root = applied(tmp_path, emu)
    legacy = state_of(root)
    del legacy["endpoint"]
    state_file(root).write_text(json.dumps(legacy))
    code, _, err = bp(root, emu, "plan", "--no-refresh")  # talks to nobody: adopts nothing
    assert code == 0, err
    assert "endpoint" not in state_of(root)
    code, _, err = bp(root, emu, "plan")
    assert code == 0, err
    assert err.count("records no BigPanda endpoint") == 1
    assert f"now bound to {emu.url} (API v1)" in err
    assert state_of(root)["endpoint"] == {"base_url": emu.url, "api_version": "v1"}
    assert state_of(root)["tables"] == legacy["tables"]
    code, _, err = bp(root, emu, "plan")
    assert code == 0 and "records no BigPanda endpoint" not in err


def test_legacy_state_is_adopted_by_apply_too(tmp_path: Path, emu: Emulator) -> None:
    root = applied(tmp_path, emu)
    legacy = state_of(root)
    del legacy["endpoint"]
    state_file(root).write_text(json.dumps(legacy))
    code, _, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 0, err
    assert "now bound to" in err
    assert state_of(root)["endpoint"]["base_url"] == emu.url


def lose_enrichments(root: Path) -> None:
    """State whose enrichment ids this BigPanda does not know (another organisation's)."""
    data = state_of(root)
    for table in data["tables"].values():
        table["enrichment_id"] = "0" * 24
    state_file(root).write_text(json.dumps(data))


def test_a_refresh_that_finds_none_of_the_enrichments_stops(tmp_path: Path, emu: Emulator) -> None:
    root = applied(tmp_path, emu)
    lose_enrichments(root)
    before = state_file(root).read_bytes()
    for argv in (["plan"], ["apply", "--auto-approve"]):
        emu.clear_requests()
        code, out, err = bp(root, emu, *argv)
        assert code == 1, err
        assert "none of the 1 enrichment(s)" in err
        assert "token probably belongs to another organisation or region" in err
        assert "--allow-missing" in err and "BIGPANDA_TOKEN" in err
        assert "Plan:" not in out
        assert all(r.method == "GET" for r in emu.requests)  # nothing written
    assert state_file(root).read_bytes() == before


def test_allow_missing_plans_to_create_them_again(
    tmp_path: Path, emu: Emulator, other_emu: Emulator
) -> None:
    root = applied(tmp_path, emu)
    lose_enrichments(root)
    code, out, err = bp(root, emu, "plan", "--allow-missing", "--format", "json")
    assert code == 0, err
    assert [t["action"] for t in json.loads(out)["tables"]] == ["create"]
    # An organisation emptied for real (here: a fresh BigPanda): apply creates them again.
    assert bp(root, other_emu, "state", "rebind", "--allow-missing")[0] == 0
    assert bp(root, other_emu, "apply", "--auto-approve")[0] == 1  # the stop, again
    code, _, err = bp(root, other_emu, "apply", "--auto-approve", "--allow-missing")
    assert code == 0, err
    eid = state_of(root)["tables"]["owners"]["enrichment_id"]
    assert other_emu.enrichment(eid, "v1") is not None


def test_some_missing_is_drift_not_a_stop(tmp_path: Path, emu: Emulator) -> None:
    root = make_repo(
        tmp_path,
        manifests={
            "owners": manifest_yaml("owners.csv"),
            "teams": manifest_yaml("teams.csv", map_name="Teams"),
        },
        tables={"owners.csv": OWNERS_CSV, "teams.csv": OWNERS_CSV},
        config=PLAIN,
    )
    assert bp(root, emu, "apply", "--auto-approve")[0] == 0
    data = state_of(root)
    data["tables"]["teams"]["enrichment_id"] = "0" * 24
    state_file(root).write_text(json.dumps(data))
    code, _, err = bp(root, emu, "plan")
    assert code == 0, err
    assert "none of the" not in err


def test_rebind_checks_the_new_endpoint_first(
    tmp_path: Path, emu: Emulator, other_emu: Emulator
) -> None:
    root = applied(tmp_path, emu)
    before = state_file(root).read_bytes()
    code, _, err = bp(root, other_emu, "state", "rebind")
    assert code == 1
    assert "not rebinding" in err and "1 of 1 enrichment(s)" in err and "owners" in err
    assert state_file(root).read_bytes() == before
    assert all(r.method == "GET" for r in other_emu.requests)
    code, _, err = bp(root, other_emu, "state", "rebind", "--allow-missing")
    assert code == 0, err
    assert f"from {emu.url} (API v1) to {other_emu.url} (API v1)" in err
    assert state_of(root)["endpoint"]["base_url"] == other_emu.url
    code, _, err = bp(root, other_emu, "state", "rebind")
    assert code == 0 and "already bound" in err
    code, _, err = bp(root, other_emu, "plan", "--allow-missing")
    assert code == 0, err


def test_rebind_to_an_endpoint_that_has_the_enrichments(tmp_path: Path, emu: Emulator) -> None:
    root = applied(tmp_path, emu)
    data = state_of(root)
    data["endpoint"]["base_url"] = "https://api.bigpanda.io"  # as if applied before a move
    state_file(root).write_text(json.dumps(data))
    assert bp(root, emu, "plan")[0] == 1
    code, _, err = bp(root, emu, "state", "rebind")
    assert code == 0, err
    assert "1 of 1 enrichment(s) found there" in err
    code, _, err = bp(root, emu, "plan", "--detailed-exitcode")
    assert code == 0, err


def test_state_without_an_endpoint_still_parses_and_keeps_its_bytes() -> None:
    from bpsync.endpoint import Endpoint
    from bpsync.errors import StateCorrupt
    from bpsync.state import dumps_state, state_from_dict

    legacy = {"format_version": 1, "serial": 3, "lineage": "l", "tables": {}}
    state = state_from_dict(legacy)
    assert state.endpoint is None
    assert json.loads(dumps_state(state)) == legacy  # unbound state is written as before
    bound = state.bound_to(Endpoint("https://api.bigpanda.io", "v1"))
    assert state_from_dict(json.loads(dumps_state(bound))) == bound
    with pytest.raises(StateCorrupt, match=r"state\.endpoint\.base_url"):
        state_from_dict({**legacy, "endpoint": {"base_url": 7, "api_version": "v1"}})


def test_state_that_records_no_enrichment_belongs_nowhere_yet() -> None:
    # A first apply that failed before BigPanda created anything leaves no id behind: the
    # next attempt, against another endpoint, is not refused.
    from bpsync.binding import bind
    from bpsync.endpoint import Endpoint
    from bpsync.errors import EndpointMismatch
    from bpsync.state import State, TableState

    a, b = Endpoint("http://127.0.0.1:1", "v1"), Endpoint("http://127.0.0.1:2", "v1")
    intent = State(1, "l", {"t": TableState("t", None, "v1", {})}, a)
    binding = bind(intent, b, location=".bpsync", environment=None, environments=(), env={})
    assert binding.state.endpoint == b and not binding.adopted
    applied = intent.with_table(TableState("t", "e1", "v1", {}))
    with pytest.raises(EndpointMismatch, match="nothing was sent"):
        bind(applied, b, location=".bpsync", environment=None, environments=(), env={})


def test_import_generate_refuses_state_of_another_endpoint(
    tmp_path: Path, emu: Emulator, other_emu: Emulator
) -> None:
    root = applied(tmp_path, emu, "manifests: ['tables/*.yaml']\napi: {version: v2.1}\n")
    for argv in (["import", "--all", "--generate"], ["import", "x", "e1", "--generate"]):
        code, _, err = bp(root, other_emu, *argv)
        assert code == 1 and "belongs to" in err, err
    assert other_emu.requests == []
