"""Environments in bpsync.yaml and in manifests (SPEC §8), through the core API and `validate`.

Selection (`environment` argument, else BPSYNC_ENV), key-by-key overrides, a state location
per environment, the configuration errors (located `bpsync.yaml:line:col`), the usage errors
(exit 64, listing the names), and a manifest's `environments:` list.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import OWNERS_HEADER, make_repo, manifest_yaml, one_problem, run_cli

from bpsync.config import (
    DEFAULT_REFRESH_MAX_ROWS,
    Config,
    Endpoint,
    load_config,
    requires_environment,
)
from bpsync.errors import ConfigError, InvalidInput, UsageError
from bpsync.manifest import load_manifests

TWO = """\
manifests: ['tables/*.yaml']
api:
  version: v2.1
environments:
  sandbox:
    api: {token_env: BIGPANDA_SANDBOX_TOKEN}
  prod:
    api: {region: eu, token_env: BIGPANDA_PROD_TOKEN}
"""
OWNERS_CSV = OWNERS_HEADER + "billing,ana,ops\n"


def project(tmp_path: Path, config: str, **manifests: str) -> Path:
    tables = {f"{stem}.csv": OWNERS_CSV for stem in manifests}
    texts = {stem: manifest_yaml(f"{stem}.csv", extra=extra) for stem, extra in manifests.items()}
    return make_repo(tmp_path, manifests=texts, tables=tables, config=config)


def load(root: Path, name: str | None = None, env: dict[str, str] | None = None) -> Config:
    return load_config(root, env or {}, name, need_environment=True)


def config_error(root: Path, name: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(root, name)
    return info.value.render()


def usage_error(root: Path, name: str | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(UsageError) as info:
        load(root, name, env)
    assert info.value.exit_code == 64
    return info.value.render()


def problems(root: Path) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        load_config(root, {})
    return [str(p) for p in info.value.problems]


# -- without environments nothing changes -------------------------------------------------------


def test_without_environments_the_config_is_as_before(tmp_path: Path) -> None:
    root = project(tmp_path, "manifests: ['tables/*.yaml']\n")
    config = load_config(root, {})
    assert config.environment is None and config.environments == ()
    assert config.state_dir == root / ".bpsync"
    assert config.endpoint == Endpoint("https://api.bigpanda.io", "v1")
    assert load(root) == config  # needing one changes nothing when none are defined


def test_endpoint_is_the_resolved_url_and_api_version(tmp_path: Path) -> None:
    root = project(tmp_path, "api: {version: v2.1, region: eu}\n")
    assert load_config(root, {}).endpoint == Endpoint("https://eu-api.bigpanda.io", "v2.1")
    env = {"BIGPANDA_API_URL": "http://127.0.0.1:8080/"}
    endpoint = load_config(root, env).endpoint
    assert endpoint == Endpoint("http://127.0.0.1:8080", "v2.1")
    assert str(endpoint) == "http://127.0.0.1:8080 (API v2.1)"


# -- selection and overrides ------------------------------------------------------------------


def test_an_environment_overrides_api_keys_one_by_one(tmp_path: Path) -> None:
    root = project(tmp_path, TWO)
    sandbox, prod = load(root, "sandbox"), load(root, "prod")
    assert sandbox.environment == "sandbox" and prod.environment == "prod"
    assert sandbox.environments == prod.environments == ("sandbox", "prod")  # file order
    assert sandbox.api.version == prod.api.version == "v2.1"  # inherited from the top level
    assert sandbox.api.token_env == "BIGPANDA_SANDBOX_TOKEN"
    assert sandbox.endpoint == Endpoint("https://api.bigpanda.io", "v2.1")
    assert prod.endpoint == Endpoint("https://eu-api.bigpanda.io", "v2.1")
    assert prod.token({"BIGPANDA_PROD_TOKEN": "t"}) == "t"


def test_bpsync_env_selects_when_no_name_is_given(tmp_path: Path) -> None:
    root = project(tmp_path, TWO)
    assert load(root, env={"BPSYNC_ENV": "prod"}).environment == "prod"
    assert load(root, "sandbox", {"BPSYNC_ENV": "prod"}).environment == "sandbox"  # --env wins


def test_bigpanda_api_url_overrides_the_selected_environment_too(tmp_path: Path) -> None:
    root = project(tmp_path, TWO)
    config = load(root, "prod", {"BIGPANDA_API_URL": "http://127.0.0.1:9"})
    assert config.endpoint == Endpoint("http://127.0.0.1:9", "v2.1")


def test_an_environment_may_be_empty(tmp_path: Path) -> None:
    root = project(tmp_path, "environments:\n  sandbox:\n  prod: {}\n")
    assert load(root, "sandbox").state_dir == root / ".bpsync" / "sandbox"
    assert load(root, "prod").api == load_config(root, {}).api


def test_validate_and_fmt_need_no_environment(tmp_path: Path) -> None:
    assert not requires_environment("validate") and not requires_environment("fmt")
    assert requires_environment("plan") and requires_environment("apply")
    assert requires_environment("import") and requires_environment("force-unlock")
    root = project(tmp_path, TWO)
    config = load_config(root, {}, need_environment=False)
    assert config.environment is None and config.environments == ("sandbox", "prod")
    assert config.api.token_env == "BIGPANDA_TOKEN"  # the top level, untouched


# -- usage errors (exit 64, listing the names) ------------------------------------------------


def test_an_environment_is_needed_when_environments_are_defined(tmp_path: Path) -> None:
    text = usage_error(project(tmp_path, TWO), None)
    assert "--env" in text and "BPSYNC_ENV" in text and "sandbox, prod" in text


def test_an_unknown_environment_lists_the_names_and_the_close_one(tmp_path: Path) -> None:
    text = usage_error(project(tmp_path, TWO), "prdo")
    assert "unknown environment 'prdo'" in text and "sandbox, prod" in text
    assert "did you mean 'prod'" in text
    text = usage_error(project(tmp_path, TWO), None, {"BPSYNC_ENV": "staging"})
    assert "BPSYNC_ENV=staging" in text and "sandbox, prod" in text


def test_an_unknown_environment_is_refused_even_where_none_is_needed(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_config(project(tmp_path, TWO), {}, "qa")


@pytest.mark.parametrize("config", ["manifests: ['tables/*.yaml']\n", "environments: {}\n", None])
def test_an_environment_given_where_none_are_defined(tmp_path: Path, config: str | None) -> None:
    root = make_repo(tmp_path, config=config)
    assert "--env prod" in usage_error(root, "prod") and "defines no environments" in (
        usage_error(root, "prod")
    )
    assert "BPSYNC_ENV=prod" in usage_error(root, None, {"BPSYNC_ENV": "prod"})
    with pytest.raises(UsageError):  # validate and fmt too: the user meant something else
        load_config(root, {}, "prod", need_environment=False)


# -- state locations --------------------------------------------------------------------------


def test_each_environment_gets_its_own_local_state_by_default(tmp_path: Path) -> None:
    root = project(tmp_path, TWO)
    assert load(root, "sandbox").state_dir == root / ".bpsync" / "sandbox"
    assert load(root, "prod").state_dir == root / ".bpsync" / "prod"
    custom = project(tmp_path, TWO + "state: {path: state/}\n")
    assert load(custom, "prod").state_dir == custom / "state" / "prod"


def test_an_environment_that_sets_its_path_keeps_it(tmp_path: Path) -> None:
    root = project(tmp_path, TWO + "    state: {path: prod-state}\n")
    assert load(root, "prod").state_dir == root / "prod-state"
    assert load(root, "sandbox").state_dir == root / ".bpsync" / "sandbox"


S3_TOP = "state: {backend: s3, bucket: acme, prefix: team/bpsync, region: eu-west-1}\n"


def test_on_s3_an_environment_without_location_gets_prefix_slash_name(tmp_path: Path) -> None:
    root = project(tmp_path, TWO + S3_TOP)
    state = load(root, "prod").state
    assert (state.backend, state.bucket, state.prefix) == ("s3", "acme", "team/bpsync/prod")
    assert state.region == "eu-west-1"  # the other keys are inherited
    bare = project(tmp_path, TWO + "state: {backend: s3, bucket: acme}\n")
    assert load(bare, "sandbox").state.prefix == "sandbox"


def test_on_s3_bucket_or_prefix_set_by_the_environment_is_its_location(tmp_path: Path) -> None:
    config = TWO.replace(
        "BIGPANDA_PROD_TOKEN}", "BIGPANDA_PROD_TOKEN}\n    state: {bucket: acme-prod}"
    ).replace("SANDBOX_TOKEN}", "SANDBOX_TOKEN}\n    state: {prefix: sandbox-state}")
    root = project(tmp_path, config + S3_TOP)
    prod, sandbox = load(root, "prod").state, load(root, "sandbox").state
    assert (prod.bucket, prod.prefix) == ("acme-prod", "team/bpsync")
    assert (sandbox.bucket, sandbox.prefix) == ("acme", "sandbox-state")


def test_an_environment_may_switch_to_s3(tmp_path: Path) -> None:
    config = TWO + "    state: {backend: s3, bucket: acme-bpsync, prefix: bigpanda}\n"
    root = project(tmp_path, config)
    assert load(root, "prod").state.prefix == "bigpanda"
    assert load(root, "sandbox").state.backend == "local"


def test_s3_without_bucket_in_an_environment_names_it(tmp_path: Path) -> None:
    root = project(tmp_path, TWO + "    state: {backend: s3}\n")
    text = config_error(root, "sandbox")  # found whichever environment is selected
    assert "bpsync.yaml:7:3" in text and "'prod'" in text and "state.bucket" in text


def test_a_bucket_given_by_every_environment_need_not_be_at_the_top(tmp_path: Path) -> None:
    config = "state: {backend: s3, prefix: bp}\nenvironments:\n" + "".join(
        f"  {n}:\n    state: {{bucket: acme-{n}}}\n" for n in ("a", "b")
    )
    root = project(tmp_path, config)
    assert load_config(root, {}).environments == ("a", "b")  # validate and fmt run
    assert load(root, "b").state.bucket == "acme-b"


def test_two_environments_with_one_local_path_are_refused(tmp_path: Path) -> None:
    config = TWO.replace("SANDBOX_TOKEN}", "SANDBOX_TOKEN}\n    state: {path: shared}")
    root = project(tmp_path, config + "    state: {path: ./shared/}\n")
    text = config_error(root, "prod")
    assert "bpsync.yaml:8:3" in text and "bpsync.yaml:5:3" in text
    assert "'sandbox'" in text and "'prod'" in text and "same state location" in text
    assert "state.path" in text
    with pytest.raises(ConfigError):  # validate refuses it as well
        load_config(root, {})


def test_nested_state_locations_are_refused(tmp_path: Path) -> None:
    # prod keeps the old top-level directory; sandbox would land inside it (.bpsync/sandbox)
    root = project(tmp_path, TWO + "    state: {path: .bpsync}\n")
    text = config_error(root, "prod")
    assert "nested state" in text and ".bpsync/sandbox" in text and "'sandbox'" in text


def test_paths_differing_only_in_case_are_one_location(tmp_path: Path) -> None:
    root = project(tmp_path, "environments:\n  prod: {}\n  Prod: {}\n")
    assert "'prod'" in config_error(root, "prod")


def test_two_environments_with_one_s3_location_are_refused(tmp_path: Path) -> None:
    config = "environments:\n" + "".join(
        f"  {n}:\n    state: {{backend: s3, bucket: acme, prefix: /bp/}}\n" for n in ("a", "b")
    )
    text = config_error(project(tmp_path, config), "a")
    assert "s3://acme/bp" in text and "bpsync.yaml:4:3" in text


def test_one_bucket_on_two_s3_services_is_two_locations(tmp_path: Path) -> None:
    config = "environments:\n" + "".join(
        f"  {n}:\n    state: {{backend: s3, bucket: acme, endpoint_url: '{url}'}}\n"
        for n, url in (("a", "http://127.0.0.1:9000"), ("b", "http://127.0.0.1:9001"))
    )
    assert load(project(tmp_path, config), "b").state.prefix == ""


def test_an_insecure_url_in_any_environment_is_found_at_load(tmp_path: Path) -> None:
    root = project(tmp_path, TWO.replace("region: eu", "base_url: 'http://bp.example.com'"))
    text = config_error(root, "sandbox")
    assert "bpsync.yaml:7:3" in text and "'prod'" in text and "http://bp.example.com" in text


def test_the_name_rule_is_the_same_in_code_and_both_schemas() -> None:
    from bpsync.config import ENVIRONMENT_NAME
    from bpsync.yamlfile import load_schema

    config = load_schema("config")["properties"]["environments"]["propertyNames"]["pattern"]
    manifest = load_schema("manifest")["properties"]["environments"]["items"]["pattern"]
    assert config == manifest == f"^{ENVIRONMENT_NAME.pattern}$"


# -- bad YAML, located ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prod env", "-prod", "prod/eu", "..", "x" * 64])
def test_environment_names_are_checked_at_the_key(tmp_path: Path, name: str) -> None:
    root = project(tmp_path, f"environments:\n  sandbox: {{}}\n  '{name}': {{}}\n")
    (found,) = problems(root)
    assert found.startswith("bpsync.yaml:3:3: invalid name") and "letters, digits" in found


def test_a_name_of_63_characters_with_dashes_and_underscores_is_accepted(tmp_path: Path) -> None:
    name = "Eu_prod-2" + "x" * 54
    root = project(tmp_path, f"environments:\n  {name}: {{}}\n")
    assert load(root, name).state_dir == root / ".bpsync" / name


def test_unknown_keys_in_an_environment_suggest_the_known_one(tmp_path: Path) -> None:
    root = project(tmp_path, "environments:\n  prod:\n    stat: {path: x}\n    api: {regin: eu}\n")
    found = problems(root)
    assert any(
        p.startswith("bpsync.yaml:3:5: unknown key 'stat'") and "'state'" in p for p in found
    )
    assert any(
        p.startswith("bpsync.yaml:4:11: unknown key 'regin'") and "'region'" in p for p in found
    )


def test_an_environment_that_is_not_a_mapping(tmp_path: Path) -> None:
    (found,) = problems(project(tmp_path, "environments:\n  prod: eu\n"))
    assert found.startswith("bpsync.yaml:2:9: environments.prod")


def test_invalid_yaml_in_environments_is_located(tmp_path: Path) -> None:
    (found,) = problems(project(tmp_path, "environments:\n  prod: {api: [}\n"))
    assert found.startswith("bpsync.yaml:2:") and "invalid YAML" in found


def test_a_duplicate_environment_is_located(tmp_path: Path) -> None:
    (found,) = problems(project(tmp_path, "environments:\n  prod: {}\n  prod: {}\n"))
    assert found.startswith("bpsync.yaml:3:3: duplicate key 'prod'")


# -- refresh.max_rows -------------------------------------------------------------------------


def test_refresh_max_rows_defaults_and_can_be_set(tmp_path: Path) -> None:
    assert load_config(project(tmp_path, "{}\n"), {}).refresh.max_rows == DEFAULT_REFRESH_MAX_ROWS
    assert load_config(project(tmp_path, "refresh: {max_rows: 500}\n"), {}).refresh.max_rows == 500


@pytest.mark.parametrize("value", ["-1", "'many'", "1.5", "true"])
def test_refresh_max_rows_must_be_a_count(tmp_path: Path, value: str) -> None:
    (found,) = problems(project(tmp_path, f"refresh:\n  max_rows: {value}\n"))
    assert found.startswith("bpsync.yaml:2:13: refresh.max_rows")


# -- manifests --------------------------------------------------------------------------------

ONLY_PROD = "environments: [prod]\n"


def test_a_manifest_may_exist_in_some_environments_only(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners=ONLY_PROD, teams="")
    names = {
        env: [m.name for m in load_manifests(load(root, env))[0]] for env in ("sandbox", "prod")
    }
    assert names == {"sandbox": ["teams"], "prod": ["owners", "teams"]}
    config = load(root, "sandbox")
    everything, found = load_manifests(config, every_environment=True)
    assert [m.name for m in everything] == ["owners", "teams"] and found == []
    owners = everything[0]
    assert owners.environments == ("prod",) and everything[1].environments is None
    assert owners.applies_to("prod") and not owners.applies_to("sandbox")
    assert owners.applies_to(None)


def test_without_a_selected_environment_every_manifest_is_loaded(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners=ONLY_PROD, teams="")
    manifests, _ = load_manifests(load_config(root, {}))
    assert [m.name for m in manifests] == ["owners", "teams"]


def test_a_table_of_another_environment_is_not_read_ahead(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners=ONLY_PROD, teams="")
    heard: list[str] = []
    load_manifests(load(root, "sandbox"), lambda p: heard.append(p.name))
    assert heard == ["teams.csv"]


def test_problems_of_another_environments_tables_still_count(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners=ONLY_PROD + "active: maybe\n")
    manifests, found = load_manifests(load(root, "sandbox"))
    assert manifests == [] and [p.location for p in found] == ["tables/owners.yaml:11:9"]


def validate(root: Path) -> str:
    code, out, err = run_cli(["validate"], root)
    assert code == 1, err
    assert out == ""
    return err


def test_validate_names_an_unknown_environment_in_a_manifest(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners="environments: [sandbox, prdo]\n")
    err = validate(root)
    one_problem(
        err, "tables/owners.yaml:10:25", "unknown environment 'prdo'", "did you mean 'prod'"
    )
    assert "sandbox, prod" in err


def test_validate_accepts_known_environments_without_one_selected(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners="environments:\n  - prod\n  - sandbox\n", teams="")
    code, _, err = run_cli(["validate"], root)
    assert code == 0, err


def test_manifest_environments_without_environments_in_the_config(tmp_path: Path) -> None:
    err = validate(project(tmp_path, "manifests: ['tables/*.yaml']\n", owners=ONLY_PROD))
    one_problem(err, "tables/owners.yaml:10:1", "defines no environments", "remove the key")


@pytest.mark.parametrize(
    ("value", "where"),
    [("[]", "10:15"), ("[prod, prod]", "10:15"), ("prod", "10:15"), ("[prod eu]", "10:16")],
)
def test_manifest_environments_must_be_a_list_of_names(
    tmp_path: Path, value: str, where: str
) -> None:
    err = validate(project(tmp_path, TWO, owners=f"environments: {value}\n"))
    one_problem(err, f"tables/owners.yaml:{where}", "environments")


# -- through the command line (BPSYNC_ENV; `--env` is the CLI's to add) -------------------------


def test_the_cli_exits_64_for_an_environment_where_none_are_defined(tmp_path: Path) -> None:
    root = project(tmp_path, "manifests: ['tables/*.yaml']\n", owners="")
    code, out, err = run_cli(["validate"], root, {"BPSYNC_ENV": "prod"})
    assert (code, out) == (64, "")
    assert "BPSYNC_ENV=prod" in err and "defines no environments" in err


def test_the_cli_exits_64_for_an_unknown_environment_listing_them(tmp_path: Path) -> None:
    root = project(tmp_path, TWO, owners="")
    code, _, err = run_cli(["plan", "--no-refresh"], root, {"BPSYNC_ENV": "qa"})
    assert code == 64 and "unknown environment 'qa'" in err and "sandbox, prod" in err
    assert not (root / ".bpsync").exists()


def test_the_cli_refuses_shared_state_and_writes_nothing(tmp_path: Path) -> None:
    root = project(tmp_path, TWO + "    state: {path: .bpsync/sandbox}\n", owners="")
    code, _, err = run_cli(["plan", "--no-refresh"], root, {"BPSYNC_ENV": "sandbox"})
    assert code == 1 and "same state location" in err and "bpsync.yaml:7:3" in err
    assert not (root / ".bpsync").exists()
