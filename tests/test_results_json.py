"""`validate --format json` and `apply --format json`: one versioned document alone on stdout,
matching the JSON Schemas shipped in schemas/, with the exit code of the text form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import OWNERS_HEADER, fast_client_options, owners_repo, run_cli

from bpsync.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-results-93fa"


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())
    return loaded


def document(out: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(out)  # stdout holds the document and nothing else
    jsonschema.validate(doc, schema(name))
    assert doc["format_version"] == "1"
    return doc


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "tables", tmp_path / "tables")
    shutil.copy(REPO / "bpsync.yaml", tmp_path / "bpsync.yaml")
    return tmp_path


def bp(root: Path, emu: Emulator, *argv: str) -> tuple[int, str, str]:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    code, out, err = run_cli(argv, root, env, client_options=fast_client_options())
    assert TOKEN not in out + err
    return code, out, err


# -- validate -------------------------------------------------------------------------------


def test_validate_json_of_a_valid_project(repo: Path) -> None:
    code, out, err = run_cli(["validate", "--format", "json"], repo)
    assert code == 0, err
    doc = document(out, "validate-result")
    assert doc["valid"] is True and doc["problems"] == []
    assert doc["summary"]["manifests"] == 3 and doc["summary"]["rows"] > 0


def test_validate_json_lists_every_problem_located(tmp_path: Path) -> None:
    root = owners_repo(
        tmp_path, "billing,ana,x|y\nbilling,bo,pay\ncrm,ravi\n", header=OWNERS_HEADER
    )
    code, out, err = run_cli(["validate", "--format", "json"], root)
    text_code, _, text_err = run_cli(["validate"], root)
    assert code == text_code == 1
    doc = document(out, "validate-result")
    assert doc["valid"] is False
    assert doc["summary"]["errors"] == 2 and doc["summary"]["warnings"] == 1
    by_line = {p["line"]: p for p in doc["problems"]}
    assert by_line[2] == {
        "file": "tables/owners.csv",
        "line": 2,
        "column": 3,
        "severity": "warning",
        "message": "value 'x|y' holds '|': BigPanda splits it into a list",
        "hint": 'wrap it as """value""" to keep a literal pipe, or remove it',
    }
    assert by_line[4]["severity"] == "error" and "2 cells" in by_line[4]["message"]
    assert by_line[3]["message"].startswith("duplicate key")
    assert "tables/owners.csv:4" in err  # the human form still goes to stderr
    assert "tables/owners.csv:4" in text_err


def test_validate_json_reports_a_broken_configuration_too(tmp_path: Path) -> None:
    root = owners_repo(tmp_path, OWNERS_HEADER + "billing,ana,pay\n")
    (root / "bpsync.yaml").write_text("api:\n  region: mars\n")
    code, out, _ = run_cli(["validate", "--format", "json"], root)
    assert code == 1
    doc = document(out, "validate-result")
    assert doc["valid"] is False and doc["problems"]
    assert all(p["severity"] == "error" for p in doc["problems"])


# -- apply ----------------------------------------------------------------------------------


def test_apply_json_reports_each_table(repo: Path, emu: Emulator) -> None:
    code, out, err = bp(repo, emu, "apply", "--auto-approve", "--format", "json")
    assert code == 0, err
    doc = document(out, "apply-result")
    assert doc["outcome"] == "applied" and doc["error"] is None
    assert doc["fingerprint"].startswith("sha256:")
    assert "Apply complete!" in err and "Plan:" in err  # human output on stderr only
    state = json.loads((repo / ".bpsync" / "state.json").read_text())["tables"]
    assert [t["name"] for t in doc["tables"]] == sorted(state)
    for t in doc["tables"]:
        assert t["action"] == "create" and t["outcome"] == "applied"
        assert t["enrichment_id"] == state[t["name"]]["enrichment_id"]
        assert t["job_id"] and t["error"] is None
        assert t["rows"]["added"] == state[t["name"]]["rows"]
        assert t["duration_seconds"] >= 0
    assert doc["summary"]["succeeded"] == 3 and doc["summary"]["failed"] == 0

    code, out, _ = bp(repo, emu, "apply", "--auto-approve", "--format", "json")
    doc = document(out, "apply-result")
    assert code == 0 and doc["outcome"] == "no-changes"
    assert {t["outcome"] for t in doc["tables"]} == {"unchanged"}
    assert all(t["enrichment_id"] for t in doc["tables"])


def test_apply_json_reports_a_failed_job_with_its_reason(repo: Path, emu: Emulator) -> None:
    emu.faults.fail_next_jobs(1, reason="Header does not match the schema")
    code, out, _ = bp(
        repo, emu, "apply", "--auto-approve", "--parallelism", "1", "--format", "json"
    )
    assert code == 1
    doc = document(out, "apply-result")
    assert doc["outcome"] == "failed"
    [failed] = [t for t in doc["tables"] if t["outcome"] == "failed"]
    assert "Header does not match the schema" in failed["error"]
    assert failed["job_id"] and failed["enrichment_id"]
    assert doc["summary"] == {
        "tables": 3,
        "succeeded": 2,
        "failed": 1,
        "rows_added": doc["summary"]["rows_added"],
        "rows_changed": 0,
        "rows_removed": 0,
    }


def test_apply_json_without_a_terminal_still_needs_approval(repo: Path, emu: Emulator) -> None:
    code, out, err = bp(repo, emu, "apply", "--format", "json")
    assert code == 1
    assert "--auto-approve" in err
    doc = document(out, "apply-result")
    assert doc["outcome"] == "error" and "no terminal" in doc["error"]
    assert doc["tables"] == []
    assert emu.requests == []


def test_apply_json_of_a_saved_plan(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "plan", "--out", "plan.out")[0] == 0
    code, out, err = bp(repo, emu, "apply", "plan.out", "--format", "json")
    assert code == 0, err
    doc = document(out, "apply-result")
    saved = json.loads(run_cli(["show", "plan.out", "--format", "json"], repo)[1])
    assert doc["fingerprint"] == saved["fingerprint"]
    assert len(doc["tables"]) == 3
