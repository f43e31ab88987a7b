"""`bpsync init`: a starter bpsync.yaml, and `init --from FILE.csv` manifests that validate as
written; bad tables get validate's located problems; nothing is ever overwritten."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import run_cli

from bpsync.scaffold import suggest_tag_name

REPO = Path(__file__).resolve().parents[1]


def project(tmp_path: Path, csv: str | bytes, name: str = "owners.csv") -> Path:
    (tmp_path / "tables").mkdir()
    data = csv.encode() if isinstance(csv, str) else csv
    (tmp_path / "tables" / name).write_bytes(data)
    return tmp_path


def test_init_writes_a_starter_config_that_loads(tmp_path: Path) -> None:
    code, out, err = run_cli(["init"], tmp_path)
    assert code == 0, err
    assert out == ""
    text = (tmp_path / "bpsync.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=schemas/config.schema.json\n")
    config = yaml.safe_load(text)
    jsonschema.validate(config, json.loads((tmp_path / "schemas/config.schema.json").read_text()))
    assert (tmp_path / "schemas" / "manifest.schema.json").is_file()
    code, _, err = run_cli(["validate"], tmp_path)
    assert code == 0, err


def test_init_never_overwrites_bpsync_yaml(tmp_path: Path) -> None:
    (tmp_path / "bpsync.yaml").write_text("manifests: ['x/*.yaml']\n")
    code, _, err = run_cli(["init"], tmp_path)
    assert code == 1
    assert "bpsync.yaml already exists; nothing was written" in err
    assert (tmp_path / "bpsync.yaml").read_text() == "manifests: ['x/*.yaml']\n"


def test_init_from_a_csv_writes_a_manifest_that_validates_as_written(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "application,owner,Runbook URL,incident_key,runbook_url\n"
        "billing,ana,https://w/b,k1,r1\ncrm,ravi,https://w/c,k2,r2\n",
    )
    code, _, err = run_cli(["init", "--from", "tables/owners.csv"], root)
    assert code == 0, err
    assert "Wrote tables/owners.yaml" in err
    text = (root / "tables" / "owners.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=../schemas/manifest.schema.json"
    manifest = yaml.safe_load(text)
    assert manifest["csv"] == "owners.csv" and manifest["name"] == "owners"
    fields = {f["title"]: f for f in manifest["fields"]}
    assert fields["application"] == {"title": "application", "type": "query_tag"}
    assert fields["owner"] == {"title": "owner", "type": "result_tag"}
    # Not a valid tag name: a suggestion that avoids the column already named runbook_url.
    assert fields["Runbook URL"]["tag_name"] == "runbook_url_2"
    assert fields["incident_key"]["tag_name"] == "incident_key_tag"  # reserved by BigPanda
    assert "tag_name" not in fields["runbook_url"]
    jsonschema.validate(manifest, json.loads((root / "schemas/manifest.schema.json").read_text()))
    code, _, err = run_cli(["validate"], root)
    assert code == 0, err
    assert "Valid." in err


def test_init_from_with_keys_and_a_name(tmp_path: Path) -> None:
    root = project(tmp_path, "host,check,team\nh1,cpu,ops\nh1,disk,ops\n", "checks.csv.gz")
    (root / "tables" / "checks.csv.gz").write_bytes(
        gzip.compress(b"host,check,team\nh1,cpu,ops\nh1,disk,ops\n")
    )
    argv = ["init", "--from", "tables/checks.csv.gz", "--key", "host", "--key", "check"]
    code, _, err = run_cli([*argv, "--name", "check-routing"], root)
    assert code == 0, err
    manifest = yaml.safe_load((root / "tables" / "check-routing.yaml").read_text())
    assert manifest["csv"] == "checks.csv.gz" and manifest["name"] == "check-routing"
    assert [f["type"] for f in manifest["fields"]] == ["query_tag", "query_tag", "result_tag"]
    assert run_cli(["validate"], root)[0] == 0


def test_init_from_titles_that_need_quoting_in_yaml(tmp_path: Path) -> None:
    root = project(tmp_path, 'id,"a: b",yes,#c,Ünïcode\n1,x,y,z,w\n')
    code, _, err = run_cli(["init", "--from", "tables/owners.csv"], root)
    assert code == 0, err
    manifest = yaml.safe_load((root / "tables" / "owners.yaml").read_text())
    assert [f["title"] for f in manifest["fields"]] == ["id", "a: b", "yes", "#c", "Ünïcode"]
    assert run_cli(["validate"], root)[0] == 0


def test_init_from_never_overwrites_a_manifest(tmp_path: Path) -> None:
    root = project(tmp_path, "application,owner\nbilling,ana\n")
    (root / "tables" / "owners.yaml").write_text("# mine\n")
    code, _, err = run_cli(["init", "--from", "tables/owners.csv"], root)
    assert code == 1
    assert "tables/owners.yaml already exists; nothing was written" in err
    assert (root / "tables" / "owners.yaml").read_text() == "# mine\n"


@pytest.mark.parametrize(
    ("csv", "location", "words"),
    [
        (
            b"\xef\xbb\xbfapplication,owner\nbilling,ana\n",
            "tables/owners.csv:1:1",
            "byte order mark",
        ),
        (b"application,owner,owner\nbilling,ana,bo\n", "tables/owners.csv:1:3", "appears twice"),
        (b"application,owner\n", "tables/owners.csv:2", "no data rows"),
        (b"", "tables/owners.csv:1", "the file is empty"),
        (b"application,owner\nbilling,ana\nbilling,bo\n", "tables/owners.csv:3", "duplicate key"),
    ],
)
def test_init_from_a_bad_table_reports_what_validate_reports(
    tmp_path: Path, csv: bytes, location: str, words: str
) -> None:
    root = project(tmp_path, csv)
    code, _, err = run_cli(["init", "--from", "tables/owners.csv"], root)
    assert code == 1
    assert f"Error: {location}: " in err and words in err, err
    assert not (root / "tables" / "owners.yaml").exists()
    # validate, given a manifest for the same table, reports the same problem
    (root / "tables" / "owners.yaml").write_text(
        "map_name: o\ncsv: owners.csv\nfields:\n  - {title: application, type: query_tag}\n"
        "  - {title: owner, type: result_tag}\n"
    )
    _, _, validate_err = run_cli(["validate"], root)
    line = next(x for x in err.splitlines() if x.startswith(f"Error: {location}: "))
    assert line in validate_err.splitlines()


def test_init_from_an_unknown_key_names_the_columns(tmp_path: Path) -> None:
    root = project(tmp_path, "application,owner\nbilling,ana\n")
    code, _, err = run_cli(["init", "--from", "tables/owners.csv", "--key", "app"], root)
    assert code == 1
    assert "--key 'app' is not a column of owners.csv" in err
    assert "application, owner" in err


def test_init_from_warns_when_the_manifest_is_outside_the_manifest_globs(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "owners.csv").write_text("application,owner\nbilling,ana\n")
    code, _, err = run_cli(["init", "--from", "data/owners.csv"], tmp_path)
    assert code == 0, err
    assert "does not match `manifests:`" in err


@pytest.mark.parametrize(
    ("title", "taken", "expected"),
    [
        ("Runbook URL", set(), "runbook_url"),
        ("2nd owner", set(), "t_2nd_owner"),
        ("primary_property", set(), "primary_property_tag"),
        ("Owner", {"owner", "owner_2"}, "owner_3"),
        ("é", set(), "tag"),
        ("x" * 80, set(), "x" * 64),
    ],
)
def test_suggested_tag_names_are_valid(title: str, taken: set[str], expected: str) -> None:
    from bpsync.bigpanda import facts

    assert suggest_tag_name(title, taken) == expected
    assert facts.tag_name_problem(expected) is None


def test_init_in_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    code, _, err = run_cli(["-C", "nowhere", "init"], tmp_path)
    assert code == 1
    assert "is not a directory" in err
    assert not (tmp_path / "nowhere").exists()
