"""Environments at work (SPEC §8, §5): `--env`, renderings that name their environment, a
fingerprint bound to environment and endpoint, state bound to its endpoint, and the stop when
a refresh finds none of the enrichments state records.

HTTP runs against the emulator on 127.0.0.1; "refused before sending anything" is asserted
on the emulator's request log.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    assert md.splitlines()[:2] == ["<!-- bpsync:plan:prod -->", "### bpsync plan for `prod`"]
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
