"""`bpsync validate` through the CLI: one test per bad-input class of a CSV (SPEC §4), the
project configuration (SPEC §1), usage errors (SPEC §2), and the golden output.

Every bad input must exit 1 and name `file:line` (and `:col` where there is one) and say
what to do; messages are asserted on the words a user acts on, not on whole sentences.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from golden_util import assert_golden
from helpers import (
    OWNERS_HEADER,
    make_repo,
    manifest_yaml,
    one_problem,
    owners_repo,
    problem_lines,
    run_cli,
)

from bpsync import __version__

CSV = "tables/owners.csv"
H = OWNERS_HEADER  # application,owner,team (key: application)


def validate(root: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(["validate", *extra], root)


def assert_invalid(root: Path) -> str:
    code, out, err = validate(root)
    assert code == 1, err
    assert out == ""  # text problems go to stderr
    return err


# -- the example project ----------------------------------------------------------------------


def test_the_shipped_example_project_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    code, out, err = run_cli(["validate"], root)
    assert code == 0, err
    assert out == ""
    assert "Valid." in err and "0 error(s)" in err


# -- CSV header --------------------------------------------------------------------------------


def test_header_missing_a_column_names_it(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "application,owner\nbilling,ana\n"))
    one_problem(err, f"{CSV}:1", "'team'", "missing", "add the column")


def test_header_with_an_extra_column_names_it_with_its_column(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "application,owner,team,site\nbilling,a,b,c\n"))
    one_problem(err, f"{CSV}:1:4", "'site'", "not a field of the manifest", "remove the column")


def test_header_with_a_duplicate_column_names_it(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "application,owner,team,owner\nbilling,a,b,c\n"))
    one_problem(err, f"{CSV}:1:4", "'owner'", "twice", "remove the duplicate")


def test_header_only_has_no_data_rows(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, H))
    one_problem(err, f"{CSV}:2", "no data rows", "add a row")


def test_empty_file(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, ""))
    one_problem(err, f"{CSV}:1", "empty", "add the header row")


# -- CSV rows ----------------------------------------------------------------------------------


def test_rows_with_a_wrong_number_of_cells(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "billing,ana\ncrm,bo,ops,extra\nok,x,y\n", header=H))
    one_problem(err, f"{CSV}:2", "2 cells", "header has 3")
    one_problem(err, f"{CSV}:3", "4 cells", "quote values holding commas")
    assert not problem_lines(err, f"{CSV}:4")


def test_duplicate_rows_name_both_lines(tmp_path: Path) -> None:
    err = assert_invalid(
        owners_repo(tmp_path, "billing,ana,ops\ncrm,bo,ops\nbilling,ana,ops\n", header=H)
    )
    one_problem(err, f"{CSV}:4", "duplicate row", "line 2", "remove one")


def test_duplicate_single_column_key_with_different_results(tmp_path: Path) -> None:
    err = assert_invalid(
        owners_repo(tmp_path, "billing,ana,ops\ncrm,bo,ops\nbilling,zed,sre\n", header=H)
    )
    one_problem(err, f"{CSV}:4", "duplicate key", "application='billing'", "line 2")


TWO_KEY_FIELDS = (
    ("check", "query_tag", None),
    ("environment", "query_tag", None),
    ("policy", "result_tag", None),
)


def test_duplicate_two_column_key_with_different_results(tmp_path: Path) -> None:
    csv = "check,environment,policy\ncpu,prod,page\ncpu,staging,page\ndisk,prod,x\ncpu,prod,mail\n"
    err = assert_invalid(owners_repo(tmp_path, csv, fields=TWO_KEY_FIELDS))
    one_problem(err, f"{CSV}:5", "duplicate key", "check='cpu'", "environment='prod'", "line 2")
    assert "1 error(s)" in err  # cpu/staging and disk/prod share a part only: no duplicate


def test_two_column_keys_are_compared_as_values_not_text(tmp_path: Path) -> None:
    # "a,b" + "c" and "a" + "b,c" are different keys, though their text is the same
    csv = 'check,environment,policy\n"a,b",c,x\na,"b,c",y\n'
    code, _, err = validate(owners_repo(tmp_path, csv, fields=TWO_KEY_FIELDS))
    assert code == 0, err


def test_ascii_value_over_32768_bytes(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "billing,ana," + "x" * 32_769 + "\n", header=H))
    one_problem(err, f"{CSV}:2:3", "32,769 bytes", "32,768", "shorten")


def test_value_of_exactly_32768_bytes_is_accepted(tmp_path: Path) -> None:
    code, _, err = validate(owners_repo(tmp_path, "billing,ana," + "é" * 16_384 + "\n", header=H))
    assert code == 0, err


def test_multibyte_value_under_32768_characters_but_over_32768_bytes(tmp_path: Path) -> None:
    value = "é" * 16_385  # 16,385 characters, 32,770 bytes of UTF-8
    err = assert_invalid(owners_repo(tmp_path, f"billing,{value},ops\n", header=H))
    one_problem(err, f"{CSV}:2:2", "32,770 bytes", "shorten")


def test_lf_inside_a_quoted_value(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, 'billing,"ana\nbo",ops\ncrm,bo,ops\n', header=H))
    one_problem(err, f"{CSV}:2", "line break", "remove")


def test_lone_cr_inside_a_quoted_value(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, 'billing,"ana\rbo",ops\ncrm,bo,ops\n', header=H))
    one_problem(err, f"{CSV}:2:2", "line break", "remove")


def test_lone_cr_inside_a_quoted_value_of_a_crlf_file(tmp_path: Path) -> None:
    csv = (H + 'billing,"ana\rbo",ops\ncrm,bo,ops\n').replace("\n", "\r\n")
    err = assert_invalid(owners_repo(tmp_path, csv))
    one_problem(err, f"{CSV}:2:2", "line break")


def test_unquoted_cr_in_a_value_is_reported_as_a_line_break(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "billing,ana\rbo,ops\n", header=H))
    line = one_problem(err, f"{CSV}:2")
    assert "line break" in line or "CR" in line
    assert "universal-newline" not in line


def test_utf8_bom_is_refused_at_line_1_col_1(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "\ufeff" + H + "billing,ana,ops\n"))
    one_problem(err, f"{CSV}:1:1", "byte order mark", "without BOM")


def test_invalid_utf8_gives_the_byte_offset(tmp_path: Path) -> None:
    data = (H + "billing,an").encode() + b"\xff" + b"a,ops\n"
    err = assert_invalid(owners_repo(tmp_path, data))
    one_problem(
        err,
        f"{CSV}:2:11",
        "invalid UTF-8",
        f"byte offset {len(H) + 10}",
        "0xff",
        "save the file as UTF-8",
    )


def test_file_over_500_mb_is_refused_before_reading(tmp_path: Path) -> None:
    root = owners_repo(tmp_path, "")
    os.truncate(root / CSV, 500_000_001)  # sparse: no disk, no time — unless it is read
    err = assert_invalid(root)
    one_problem(err, CSV, "500,000,001 bytes", "at most 500,000,000", "split the table")


def test_malformed_quoting(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, 'billing,"b"c,ops\ncrm,bo,ops\n', header=H))
    one_problem(err, f"{CSV}:2", "malformed CSV", "quote values")
    assert not problem_lines(err, f"{CSV}:3")  # reading resumes after the bad line


def test_blank_line(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "billing,ana,ops\n\ncrm,bo,ops\n", header=H))
    one_problem(err, f"{CSV}:3", "blank line", "remove")


def test_blank_last_line(tmp_path: Path) -> None:
    err = assert_invalid(owners_repo(tmp_path, "billing,ana,ops\n\n", header=H))
    one_problem(err, f"{CSV}:3", "blank line")


# -- accepted with notes -----------------------------------------------------------------------


def test_crlf_line_endings_are_accepted(tmp_path: Path) -> None:
    root = owners_repo(tmp_path, (H + "billing,ana,ops\ncrm,bo,ops\n").replace("\n", "\r\n"))
    code, _, err = validate(root)
    assert code == 0, err
    assert "2 row(s)" in err


def test_missing_final_newline_is_accepted(tmp_path: Path) -> None:
    code, _, err = validate(owners_repo(tmp_path, H + "billing,ana,ops\ncrm,bo,ops"))
    assert code == 0, err
    assert "2 row(s)" in err


def test_pipe_in_a_value_is_a_warning_not_an_error(tmp_path: Path) -> None:
    code, _, err = validate(owners_repo(tmp_path, "billing,ana|bo,ops\n", header=H))
    assert code == 0, err
    line = one_problem(err, f"{CSV}:2:2", "'|'", "list", '"""value"""')
    assert line.startswith("Warning:")


# -- many errors -------------------------------------------------------------------------------


def many_errors_repo(tmp_path: Path) -> Path:
    return owners_repo(tmp_path, "".join(f"app{i}\n" for i in range(80)), header=H)


def test_many_errors_are_reported_in_one_run_and_capped(tmp_path: Path) -> None:
    err = assert_invalid(many_errors_repo(tmp_path))
    listed = [line for line in err.splitlines() if "1 cells" in line]
    assert len(listed) == 50
    assert problem_lines(err, f"{CSV}:2") and problem_lines(err, f"{CSV}:51")
    assert not problem_lines(err, f"{CSV}:52")
    capped = [line for line in err.splitlines() if "… and 30 more error(s)" in line]
    assert len(capped) == 1 and CSV in capped[0]


def test_the_cap_line_comes_after_the_listed_errors(tmp_path: Path) -> None:
    err = assert_invalid(many_errors_repo(tmp_path))
    lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert "… and 30 more error(s)" in lines[-1]


def test_the_summary_counts_every_error_not_only_the_listed_ones(tmp_path: Path) -> None:
    err = assert_invalid(many_errors_repo(tmp_path))
    assert "80 error(s)" in err


def test_errors_of_several_tables_are_all_reported(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={"a": manifest_yaml("a.csv", name="a"), "b": manifest_yaml("b.csv", name="b")},
        tables={"a.csv": H + "x,y\n", "b.csv": H + "k,v,w\nk,v,w\n"},
    )
    err = assert_invalid(root)
    one_problem(err, "tables/a.csv:2", "2 cells")
    one_problem(err, "tables/b.csv:3", "duplicate row")


# -- bpsync.yaml -------------------------------------------------------------------------------

OWNERS = {"owners": manifest_yaml("owners.csv")}
OWNERS_CSV = {"owners.csv": H + "billing,ana,ops\n"}


def config_repo(tmp_path: Path, config: str) -> Path:
    return make_repo(tmp_path, manifests=OWNERS, tables=OWNERS_CSV, config=config)


def test_config_unknown_key_suggests_the_known_one(tmp_path: Path) -> None:
    err = assert_invalid(config_repo(tmp_path, "api:\n  versoin: v1\n"))
    line = one_problem(err, "bpsync.yaml:2:3", "unknown key 'versoin'", "did you mean 'version'")
    assert line.startswith("Error:")


def test_config_unknown_top_level_key_lists_known_keys(tmp_path: Path) -> None:
    err = assert_invalid(config_repo(tmp_path, "api:\n  version: v1\nmanifest: [x]\n"))
    one_problem(err, "bpsync.yaml:3:1", "unknown key 'manifest'", "'manifests'")


def test_config_unquoted_api_version_2_1_is_an_error_naming_the_allowed_values(
    tmp_path: Path,
) -> None:
    err = assert_invalid(config_repo(tmp_path, "api:\n  version: 2.1\n"))
    line = one_problem(err, "bpsync.yaml:2:12", "api.version")
    assert "'v2.1'" in line or "quote it" in line


def test_config_quoted_v2_1_is_valid(tmp_path: Path) -> None:
    code, _, err = validate(config_repo(tmp_path, 'api:\n  version: "v2.1"\n'))
    assert code == 0, err


def test_config_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    err = assert_invalid(config_repo(tmp_path, "api:\n  version: v1\n state: [\n"))
    assert re.search(r"bpsync\.yaml:3:\d+: invalid YAML", err), err


HTTP_COMMANDS = [
    ["validate"],
    ["fmt"],
    ["fmt", "--check"],
    ["plan", "--no-refresh"],
    ["apply", "--auto-approve"],
    ["import", "owners", "abc123"],
    ["force-unlock", "lock-1"],
]


@pytest.mark.parametrize("argv", HTTP_COMMANDS, ids=" ".join)
def test_config_plain_http_to_a_remote_host_fails_every_command(
    tmp_path: Path, argv: list[str]
) -> None:
    root = make_repo(
        tmp_path,
        manifests=OWNERS,
        config="api:\n  base_url: http://example.com\n",
        tables={"owners.csv": (H + "billing,ana,ops\n").replace("\n", "\r\n")},
    )
    before = (root / CSV).read_bytes()
    code, _, err = run_cli(argv, root)
    assert code == 1
    assert "bpsync.yaml" in err and "'http://example.com'" in err
    assert "plain http" in err and "use https://" in err
    assert (root / CSV).read_bytes() == before  # refused before touching anything
    assert not (root / ".bpsync").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8471",
        "http://localhost:8471",
        "http://[::1]:8471",
        "https://bigpanda.internal.example.com/api",
    ],
)
def test_config_loopback_http_and_any_https_are_accepted(tmp_path: Path, url: str) -> None:
    code, _, err = validate(config_repo(tmp_path, f"api:\n  base_url: {url}\n"))
    assert code == 0, err


def test_env_api_url_with_plain_http_to_a_remote_host_is_an_error(tmp_path: Path) -> None:
    root = config_repo(tmp_path, "api:\n  region: us\n")
    code, _, err = run_cli(["validate"], root, env={"BIGPANDA_API_URL": "http://10.0.0.1"})
    assert code == 1
    assert "BIGPANDA_API_URL" in err and "http://10.0.0.1" in err and "https://" in err


def test_env_api_url_on_loopback_is_accepted(tmp_path: Path) -> None:
    root = config_repo(tmp_path, "api:\n  region: us\n")
    code, _, err = run_cli(["validate"], root, env={"BIGPANDA_API_URL": "http://127.0.0.1:9"})
    assert code == 0, err


def test_env_api_url_error_is_not_blamed_on_bpsync_yaml(tmp_path: Path) -> None:
    root = config_repo(tmp_path, "api:\n  region: us\n")
    _, _, err = run_cli(["validate"], root, env={"BIGPANDA_API_URL": "http://10.0.0.1"})
    assert "bpsync.yaml" not in err


def test_dash_c_runs_in_another_directory(tmp_path: Path) -> None:
    root = config_repo(tmp_path, "api:\n  version: v1\n")
    code, _, err = run_cli(["-C", "repo", "validate"], tmp_path)
    assert code == 0, err
    assert "1 table(s)" in err
    code, _, err = run_cli(["-C", str(root), "validate"], Path("/"))
    assert code == 0, err


def test_dash_c_to_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    code, _, err = run_cli(["-C", "nope", "validate"], tmp_path)
    assert code == 1
    assert "nope" in err and "-C" in err


def test_config_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path, manifests=OWNERS, tables=OWNERS_CSV, config="manifests: ['tables/*.yaml']\n"
    )
    sub = root / "docs" / "deep"
    sub.mkdir(parents=True)
    code, _, err = run_cli(["validate"], sub)
    assert code == 0, err
    assert "1 table(s)" in err  # the manifests of the parent's config, not of docs/deep


def test_config_errors_found_from_a_subdirectory_still_name_the_file(tmp_path: Path) -> None:
    root = config_repo(tmp_path, "bogus: 1\n")
    code, _, err = run_cli(["validate"], root / "tables")
    assert code == 1
    one_problem(err, "../bpsync.yaml:1:1", "unknown key 'bogus'")


# -- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "--bogus"],
        ["--bogus", "validate"],
        ["validate", "--table"],
        ["validate", "--format", "xml"],
        ["import", "only-a-name"],
        ["frobnicate"],
        [],
    ],
    ids=[
        "unknown-flag",
        "unknown-global-flag",
        "missing-argument",
        "bad-choice",
        "missing-positional",
        "unknown-command",
        "no-command",
    ],
)
def test_usage_errors_exit_64_never_2(tmp_path: Path, argv: list[str]) -> None:
    code, out, err = run_cli(argv, tmp_path)
    assert code == 64
    assert out == ""
    assert "--help" in err  # says where to look


def test_unknown_command_lists_the_commands(tmp_path: Path) -> None:
    _, _, err = run_cli(["frobnicate"], tmp_path)
    assert "'frobnicate'" in err and "validate" in err and "apply" in err


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run_cli(["--version"], tmp_path)
    assert code == 0
    assert capsys.readouterr().out.strip() == f"bpsync {__version__}"


def test_version_from_the_installed_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bpsync", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"bpsync {__version__}"


def test_unknown_table_is_a_usage_error_naming_the_known_tables(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={
            "a": manifest_yaml("a.csv", name="alpha"),
            "b": manifest_yaml("b.csv", name="beta"),
        },
        tables={"a.csv": H + "x,y,z\n", "b.csv": H + "x,y,z\n"},
    )
    code, _, err = run_cli(["validate", "--table", "gamma"], root)
    assert code == 64
    assert "gamma" in err and "alpha" in err and "beta" in err


def test_table_option_limits_validation_to_that_table(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={
            "a": manifest_yaml("a.csv", name="alpha"),
            "b": manifest_yaml("b.csv", name="beta"),
        },
        tables={"a.csv": H + "x,y,z\n", "b.csv": H + "broken\n"},
    )
    code, _, err = run_cli(["validate", "--table", "alpha"], root)
    assert code == 0, err
    assert run_cli(["validate", "--table", "beta"], root)[0] == 1


# -- golden ------------------------------------------------------------------------------------

ROUTING_FIELDS = (
    ("check", "query_tag", None),
    ("environment", "query_tag", None),
    ("Escalation Policy", "result_tag", None),
)
HOST_FIELDS = (
    ("host", "query_tag", None),
    ("cmdb_ci", "result_tag", None),
    ("support_group", "result_tag", None),
)


def broken_repo(tmp_path: Path) -> Path:
    """An example repository with several problems across three files."""
    return make_repo(
        tmp_path,
        manifests={
            # schema problems: an unknown key, a YAML 1.1 boolean, an invalid result tag name
            "routing": manifest_yaml(
                "routing.csv",
                ROUTING_FIELDS,
                name="routing",
                map_name="NO",
                extra="descripton: typo\n",
            ),
            "hosts": manifest_yaml("hosts.csv", HOST_FIELDS, name="hosts"),
            "owners": manifest_yaml("owners.csv", name="owners"),
        },
        tables={
            "routing.csv": "check,environment,Escalation Policy\ncpu,prod,page\n",
            "hosts.csv": (
                "host,cmdb_ci,support_group\r\n"
                'web-1,"CI1"x,ops\r\n'  # malformed quoting
                "web-2,CI2,ops|sre\r\n"  # pipe: warning
                "\r\n"  # blank line
                "web-3,CI3\r\n"  # too few cells
                "web-4,CI4,ops\r\n"
                "web-4,CI4,ops\r\n"  # duplicate row
            ),
            "owners.csv": (
                "application,owner,team,site\n"  # extra column
                "billing,ana,ops,x\n"
            ),
        },
    )


def test_golden_validate_output(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code, out, err = validate(broken_repo(tmp_path))
    assert code == 1 and out == ""
    assert_golden(request.config, "validate", "broken.txt", err)


def test_golden_validate_github_annotations(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code, out, err = validate(broken_repo(tmp_path), "--format", "github")
    assert code == 1
    lines = out.splitlines()
    assert lines and all(
        re.match(r"::(error|warning) file=tables/[\w.]+\.(csv|yaml)[,:]", line) for line in lines
    ), out
    assert "::error file=tables/routing.yaml,line=2,col=11::" in out
    assert "::warning file=tables/hosts.csv,line=3,col=3::" in out
    assert "::" not in err and "error(s)" in err  # annotations alone on stdout, summary on stderr
    assert_golden(request.config, "validate", "broken.github.txt", out)
