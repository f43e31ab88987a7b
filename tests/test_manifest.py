"""Table manifests (SPEC §1 `tables/<name>.yaml`) through `bpsync validate`: schema, YAML
traps, field rules (bigpanda-api.md §10, §11), CSV paths and the rules across manifests.

Each bad manifest must exit 1 and point at `file:line:col` of the offending key or value.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from helpers import OWNERS_HEADER, make_repo, manifest_yaml, one_problem, run_cli

from bpsync.config import load_config
from bpsync.manifest import load_manifests

M = "tables/owners.yaml"
GOOD = manifest_yaml("owners.csv")  # map_name line 1, csv line 2, fields from line 3
OWNERS_CSV = OWNERS_HEADER + "billing,ana,ops\n"


def repo(tmp_path: Path, manifest: str, csv: str = OWNERS_CSV) -> Path:
    return make_repo(tmp_path, manifests={"owners": manifest}, tables={"owners.csv": csv})


def invalid(root: Path) -> str:
    code, out, err = run_cli(["validate"], root)
    assert code == 1, err
    assert out == ""
    return err


def fields(*specs: tuple[str, str, str | None]) -> str:
    return manifest_yaml("owners.csv", specs)


KEY = ("application", "query_tag", None)
OWNER = ("owner", "result_tag", None)


# -- schema ------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_close_known_key(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, GOOD + "descripton: owners\n"))
    one_problem(err, f"{M}:10:1", "unknown key 'descripton'", "did you mean 'description'")


def test_unknown_key_inside_a_field(tmp_path: Path) -> None:
    text = GOOD.replace("    type: query_tag\n", "    type: query_tag\n    tagname: app\n", 1)
    err = invalid(repo(tmp_path, text))
    one_problem(err, f"{M}:6:5", "unknown key 'tagname'", "did you mean 'tag_name'")


@pytest.mark.parametrize("key", ["map_name", "csv", "fields"])
def test_missing_required_key_is_named(tmp_path: Path, key: str) -> None:
    kept = [line for line in GOOD.splitlines(keepends=True) if not line.startswith(f"{key}:")]
    if key == "fields":
        kept = kept[:1] + [line for line in kept[1:] if not line.startswith(" ")]
    err = invalid(repo(tmp_path, "".join(kept)))
    one_problem(err, f"{M}:1:1", f"'{key}' is a required property", "add the key")


def test_duplicate_yaml_key_points_at_the_second_one(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, GOOD + "map_name: Other owners\n"))
    one_problem(err, f"{M}:10:1", "duplicate key 'map_name'", "first at line 1", "remove one")


@pytest.mark.parametrize(
    ("text", "where", "read_as"),
    [
        (GOOD.replace("map_name: Owners", "map_name: NO"), "1:11", "a boolean (False)"),
        (GOOD.replace("map_name: Owners", "map_name: on"), "1:11", "a boolean (True)"),
        ("name: 0700\n" + GOOD, "1:7", "a number"),
        (GOOD.replace("map_name: Owners", "map_name: 1.10"), "1:11", "a number (1.1)"),
        (GOOD.replace("title: owner", "title: yes"), "6:12", "a boolean (True)"),
    ],
    ids=["NO", "on", "0700", "1.10", "title-yes"],
)
def test_yaml_1_1_traps_say_quote_it_at_the_value(
    tmp_path: Path, text: str, where: str, read_as: str
) -> None:
    csv = OWNERS_CSV.replace("owner", "yes", 1) if "title: yes" in text else OWNERS_CSV
    err = invalid(repo(tmp_path, text, csv))
    one_problem(err, f"{M}:{where}", f"read as {read_as}", "quote it")


def test_quoted_yaml_1_1_lookalikes_are_text(tmp_path: Path) -> None:
    text = 'name: "0700"\n' + GOOD.replace("map_name: Owners", 'map_name: "NO"')
    code, _, err = run_cli(["validate"], repo(tmp_path, text))
    assert code == 0, err


@pytest.mark.parametrize("value", ['!!float ""', '!!int ""', "!!binary 'not base64 ?'"])
def test_a_value_its_explicit_tag_cannot_read_is_located(tmp_path: Path, value: str) -> None:
    # PyYAML raised IndexError on `!!float ""`: validate crashed instead of naming the line.
    err = invalid(repo(tmp_path, GOOD + f"max_delete_fraction: {value}\n"))
    one_problem(err, f"{M}:10:22", "invalid value", "tag")


def test_invalid_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    text = "map_name: Owners\ncsv: owners.csv\n  oops: indented\nfields: []\n"
    err = invalid(repo(tmp_path, text))
    one_problem(err, f"{M}:3:7", "invalid YAML", "fix the YAML syntax")


def test_unclosed_flow_sequence_names_the_file(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, GOOD + "extra: [a, b\n"))
    assert f"{M}:" in err and "invalid YAML" in err


def test_a_manifest_that_is_not_a_mapping(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, "- application\n- owner\n"))
    one_problem(err, f"{M}:1:1", "must be a mapping")


# -- fields ------------------------------------------------------------------------------------


def test_no_query_tag(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, fields(("application", "result_tag", None), OWNER)))
    one_problem(err, f"{M}:4:3", "no field is a query_tag", "type: query_tag")


def test_no_result_tag(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, fields(KEY, ("owner", "query_tag", None))))
    one_problem(err, f"{M}:4:3", "no field is a result_tag", "type: result_tag")


def test_two_result_fields_targeting_one_tag_via_tag_name(tmp_path: Path) -> None:
    text = fields(KEY, OWNER, ("team", "result_tag", "owner"))
    err = invalid(repo(tmp_path, text))
    # points at the second field's tag_name value
    one_problem(err, f"{M}:10:15", "'owner'", "targeted twice", "field 2", "another tag_name")


def test_different_manifests_may_enrich_the_same_tag(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={"a": manifest_yaml("a.csv", name="a"), "b": manifest_yaml("b.csv", name="b")},
        tables={"a.csv": OWNERS_CSV, "b.csv": OWNERS_CSV},
    )
    code, _, err = run_cli(["validate"], root)
    assert code == 0, err


def test_result_title_that_is_not_a_tag_name_suggests_tag_name(tmp_path: Path) -> None:
    text = fields(KEY, OWNER, ("Runbook URL", "result_tag", None))
    csv = "application,owner,Runbook URL\nbilling,ana,https://x\n"
    err = invalid(repo(tmp_path, text, csv))
    one_problem(
        err,
        f"{M}:8:12",
        "'Runbook URL'",
        "not a valid BigPanda tag name",
        "tag_name",
        "'runbook_url'",
    )


def test_result_title_with_a_valid_tag_name_is_accepted(tmp_path: Path) -> None:
    text = fields(KEY, OWNER, ("Runbook URL", "result_tag", "runbook_url"))
    csv = "application,owner,Runbook URL\nbilling,ana,https://x\n"
    code, _, err = run_cli(["validate"], repo(tmp_path, text, csv))
    assert code == 0, err


def test_query_tag_titles_need_not_be_tag_names(tmp_path: Path) -> None:
    text = fields(("App Name", "query_tag", None), OWNER)
    code, _, err = run_cli(["validate"], repo(tmp_path, text, "App Name,owner\nbilling,ana\n"))
    assert code == 0, err


def test_reserved_tag_name(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, fields(KEY, OWNER, ("team", "result_tag", "incident_key"))))
    one_problem(err, f"{M}:10:15", "'incident_key'", "reserved", "rename")


def test_tag_name_over_64_characters(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, fields(KEY, OWNER, ("team", "result_tag", "t" * 65))))
    one_problem(err, f"{M}:10:15", "longer than 64")


def test_tag_name_of_64_characters_is_accepted(tmp_path: Path) -> None:
    code, _, err = run_cli(
        ["validate"], repo(tmp_path, fields(KEY, OWNER, ("team", "result_tag", "t" * 64)))
    )
    assert code == 0, err


def test_discouraged_tag_name_is_a_warning(tmp_path: Path) -> None:
    code, _, err = run_cli(
        ["validate"], repo(tmp_path, fields(KEY, OWNER, ("team", "result_tag", "status")))
    )
    assert code == 0, err
    assert one_problem(err, f"{M}:10:15", "'status'").startswith("Warning:")


def test_every_field_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    text = fields(KEY, ("Owner Name", "result_tag", None), ("team", "result_tag", "incident_key"))
    err = invalid(repo(tmp_path, text + "extra: 1\n"))
    one_problem(err, f"{M}:6:12", "'Owner Name'")
    one_problem(err, f"{M}:10:15", "'incident_key'")
    one_problem(err, f"{M}:11:1", "unknown key 'extra'")


# -- csv path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("csv", ["../../outside.csv", "../../../x.csv", "/etc/hostname"])
def test_csv_path_outside_the_repository_is_refused(tmp_path: Path, csv: str) -> None:
    (tmp_path / "outside.csv").write_text(OWNERS_CSV, encoding="utf-8")
    err = invalid(repo(tmp_path, manifest_yaml(csv)))
    one_problem(err, f"{M}:2:6", "outside the repository", "keep tables inside")


def test_csv_symlink_leading_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text(OWNERS_CSV, encoding="utf-8")
    root = make_repo(tmp_path, manifests={"owners": GOOD})
    (root / "tables" / "owners.csv").symlink_to(outside)
    err = invalid(root)
    one_problem(err, f"{M}:2:6", "outside the repository", "symlinks")


def test_csv_in_a_subdirectory_of_the_repository_is_accepted(tmp_path: Path) -> None:
    root = make_repo(tmp_path, manifests={"owners": manifest_yaml("../data/owners.csv")})
    (root / "data").mkdir()
    (root / "data" / "owners.csv").write_text(OWNERS_CSV, encoding="utf-8")
    code, _, err = run_cli(["validate"], root)
    assert code == 0, err


def test_missing_csv_file(tmp_path: Path) -> None:
    err = invalid(make_repo(tmp_path, manifests={"owners": GOOD}))
    one_problem(err, f"{M}:2:6", "tables/owners.csv does not exist", "fix the `csv:` path")


# -- across manifests --------------------------------------------------------------------------


def test_two_manifests_with_the_same_name(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={
            "a": manifest_yaml("a.csv", name="owners"),
            "b": manifest_yaml("b.csv", name="owners"),
        },
        tables={"a.csv": OWNERS_CSV, "b.csv": OWNERS_CSV},
    )
    err = invalid(root)
    one_problem(err, "tables/b.yaml", "'owners'", "tables/a.yaml", "unique `name:`")


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("a.csv"), "b": manifest_yaml("b.csv", name="owners")},
        tables={"a.csv": OWNERS_CSV, "b.csv": OWNERS_CSV},
    )
    err = invalid(root)
    assert "'owners'" in err and "unique" in err


def result_tag_repo(tmp_path: Path, tags: int) -> Path:
    """Three manifests holding `tags` distinct result tags between them."""
    manifests, tables = {}, {}
    per = -(-tags // 3)
    for i in range(3):
        names = [f"t{n}" for n in range(i * per, min(tags, (i + 1) * per))]
        specs = [("k", "query_tag", None)] + [(n, "result_tag", None) for n in names]
        manifests[f"m{i}"] = manifest_yaml(f"m{i}.csv", specs)
        header, row = ",".join(s[0] for s in specs), ",".join("x" * len(specs))
        tables[f"m{i}.csv"] = f"{header}\n{row}\n"
    return make_repo(tmp_path, manifests=manifests, tables=tables)


def test_more_than_200_result_tags_across_manifests(tmp_path: Path) -> None:
    err = invalid(result_tag_repo(tmp_path, 201))
    assert "201 distinct result tags" in err and "200" in err and "tag_name" in err


def test_200_result_tags_across_manifests_are_accepted(tmp_path: Path) -> None:
    code, _, err = run_cli(["validate"], result_tag_repo(tmp_path, 200))
    assert code == 0, err


# -- hostile YAML ------------------------------------------------------------------------------

BILLION_LAUGHS = "".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def test_yaml_alias_bomb_is_refused_quickly_and_without_exhausting_memory(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path, BILLION_LAUGHS)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        code, _, err = run_cli(["validate"], root)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1
    one_problem(err, M, "alias", "without anchors and aliases")
    assert elapsed < 5
    assert peak < 100 * 2**20, peak  # 9**9 "lol"s would take gigabytes


def test_deeply_nested_yaml_is_an_error_not_a_crash(tmp_path: Path) -> None:
    root = repo(tmp_path, "map_name: " + "[" * 5000 + "]" * 5000 + "\n")
    code, _, err = run_cli(["validate"], root)
    assert code == 1
    assert M in err and "invalid YAML" in err
    assert "unexpected" not in err  # handled, not a bug report


def test_manifests_outside_the_configured_globs_are_ignored(tmp_path: Path) -> None:
    root = repo(tmp_path, GOOD)
    (root / "notes.yaml").write_text("not: a manifest\n", encoding="utf-8")
    manifests, problems = load_manifests(load_config(root, {}))
    assert [m.name for m in manifests] == ["owners"] and problems == []
    assert manifests[0].csv_path == root / "tables" / "owners.csv"


def test_two_fields_with_the_same_title(tmp_path: Path) -> None:
    err = invalid(repo(tmp_path, fields(KEY, OWNER, ("owner", "result_tag", "owner_2"))))
    one_problem(err, f"{M}:8:5", "'owner' is used twice", "rename")


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_csv_name_too_long_for_the_file_system_is_a_located_problem(
    tmp_path: Path, command: str
) -> None:
    """Found by fuzzing: `csv:` naming a file longer than the file system allows made
    `is_file()` raise (ENAMETOOLONG) and ended in a traceback."""
    name = "x" * 300 + ".csv"
    root = make_repo(tmp_path, manifests={"t": manifest_yaml(name)})
    code, out, err = run_cli([command, "--no-refresh"] if command == "plan" else [command], root)
    assert code == 1, out
    assert "tables/t.yaml:2:6" in err and "cannot be used" in err and "Traceback" not in err
