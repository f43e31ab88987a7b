"""What bpsync says when something is off (issue 13, defect 6 and item 7): every message
names the file, the line and the fix, and none is a Python exception's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import fast_client_options, make_repo, manifest_yaml, run_cli
from test_crash import TOKEN, bp

from bpsync.emulator import Emulator

EMULATOR_OPTIONS = {"job_seconds": 0.0, "token": TOKEN}
KV = (("k", "query_tag", None), ("v", "result_tag", None))


def kv_repo(tmp_path: Path, csv: str | bytes) -> Path:
    return make_repo(
        tmp_path,
        manifests={"kv": manifest_yaml("kv.csv", KV, map_name="KV")},
        tables={"kv.csv": csv},
    )


def test_new_column_order_plans_an_update_with_no_changed_row(
    tmp_path: Path, emu: Emulator
) -> None:
    repo = kv_repo(tmp_path, "k,v\na,1\nb,2\n")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    (repo / "tables" / "kv.csv").write_text("v,k\n1,a\n2,b\n")
    code, out, err = bp(repo, emu, "plan")
    assert code == 0, out + err
    assert "kv (update)" in out, out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("~ k=")], out
    assert "unchanged cell" not in out, out
    assert "0 rows to add, 0 to change, 0 to remove" in out
    assert "new order" in out


def test_crlf_inside_a_value_is_named_crlf(tmp_path: Path) -> None:
    repo = kv_repo(tmp_path, b'k,v\na,"x\r\ny"\n')
    code, _, err = run_cli(["validate"], repo)
    assert code == 1
    assert "(CRLF)" in err and "(LF)" not in err, err


def test_lf_inside_a_value_of_a_crlf_file_is_named_lf(tmp_path: Path) -> None:
    repo = kv_repo(tmp_path, b'k,v\r\na,"x\ny"\r\nb,2\r\n')
    code, _, err = run_cli(["validate"], repo)
    assert code == 1
    assert "line break (LF)" in err and "CRLF" not in err, err


BAD_ENCODINGS = {
    "latin-1": b"k,v\na,1\nb,caf\xe9\n",
    "overlong": b"k,v\na,1\nb,\xc0\xaf\n",
    "surrogate": b"k,v\na,1\nb,\xed\xa0\x80\n",
    "utf-16": "k,v\na,1\nb,2\n".encode("utf-16"),  # with its BOM
    "latin-1 header": b"k,v\xe9\na,1\n",
}


@pytest.mark.parametrize("name", sorted(BAD_ENCODINGS))
@pytest.mark.parametrize("command", ["validate", "plan", "apply"])
def test_non_utf8_table_is_a_located_error_everywhere(
    tmp_path: Path, emu: Emulator, name: str, command: str
) -> None:
    repo = kv_repo(tmp_path, "k,v\na,1\nb,2\n")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")  # a snapshot to diff against
    assert code == 0, out + err
    (repo / "tables" / "kv.csv").write_bytes(BAD_ENCODINGS[name])
    argv = [command, "--auto-approve"] if command == "apply" else [command]
    code, out, err = bp(repo, emu, *argv)
    assert code == 1, out + err
    assert "unexpected" not in err and "Decode" not in err, err
    assert "tables/kv.csv:" in err and "UTF-8" in err, err
    if name == "utf-16":
        assert "UTF-16" in err, err


EXCEL = {
    "bom+crlf": (b"\xef\xbb\xbfk,v\r\na,caf\xc3\xa9\r\n", []),
    "utf-16": ("k,v\r\na,café\r\n".encode("utf-16"), []),
    "cp1252": (b"k,v\r\na,caf\xe9 \x80\r\n", ["--encoding", "cp1252"]),
}


@pytest.mark.parametrize("name", sorted(EXCEL))
def test_fmt_fixes_excel_output(tmp_path: Path, name: str) -> None:
    data, flags = EXCEL[name]
    repo = kv_repo(tmp_path, data)
    code, _, err = run_cli(["validate"], repo)
    assert code == 1, err
    code, out, err = run_cli(["fmt", *flags], repo)
    assert code == 0, out + err
    assert "reformatted tables/kv.csv" in out
    expected = "k,v\na,café €\n" if name == "cp1252" else "k,v\na,café\n"
    assert (repo / "tables" / "kv.csv").read_bytes() == expected.encode()
    code, _, err = run_cli(["validate"], repo)
    assert code == 0, err


def test_fmt_says_which_encoding_to_give(tmp_path: Path) -> None:
    repo = kv_repo(tmp_path, b"k,v\na,caf\xe9\n")
    code, _, err = run_cli(["fmt"], repo)
    assert code == 1
    assert "tables/kv.csv:2:6" in err and "--encoding cp1252" in err, err
    assert (repo / "tables" / "kv.csv").read_bytes() == b"k,v\na,caf\xe9\n"


def test_nothing_listening_names_the_endpoint_and_shows_each_retry(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens
    repo = kv_repo(tmp_path, "k,v\na,1\n")
    env = {"BIGPANDA_API_URL": url, "BIGPANDA_TOKEN": TOKEN}
    code, out, err = run_cli(
        ["apply", "--auto-approve"], repo, env, client_options=fast_client_options()
    )
    assert code == 1, out + err
    assert url in err and "refused the connection" in err, err
    assert "typo or the wrong region" in err
    retries = [line for line in err.splitlines() if line.startswith("retrying ")]
    assert len(retries) >= 4 and "Connection refused" in retries[0], err
    assert TOKEN not in out + err


def test_validate_table_with_a_yaml_error_shows_the_yaml_error(tmp_path: Path) -> None:
    repo = kv_repo(tmp_path, "k,v\na,1\n")
    (repo / "tables" / "kv.yaml").write_text("map_name: KV\ncsv: kv.csv\nfields: [\n")
    code, _, err = run_cli(["validate", "--table", "kv"], repo)
    assert code == 1, err
    assert "tables/kv.yaml:" in err and "YAML" in err, err
    assert "unknown table" not in err


@pytest.mark.parametrize("header", ["K,v", "k ,v", " k,v"])
def test_header_differing_only_in_case_or_spaces_says_which_title_was_meant(
    tmp_path: Path, header: str
) -> None:
    repo = kv_repo(tmp_path, header + "\na,1\n")
    code, _, err = run_cli(["validate"], repo)
    assert code == 1
    assert "differs from the field 'k' only in case or spaces" in err, err
    assert "rename the column to 'k'" in err
    assert "of the manifest is missing" not in err


def test_plan_without_a_token_says_once_that_it_did_not_refresh(
    tmp_path: Path, emu: Emulator
) -> None:
    repo = kv_repo(tmp_path, "k,v\na,1\n")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    code, out, err = run_cli(["plan"], repo, {"BIGPANDA_API_URL": emu.url})
    assert code == 0, out + err
    assert err.count("not refreshed: BIGPANDA_TOKEN is not set") == 1, err
    (repo / "bpsync.yaml").write_text(
        "manifests: ['tables/*.yaml']\napi:\n  token_env: BP_PROD_TOKEN\n"
    )
    code, out, err = run_cli(["plan"], repo, {"BIGPANDA_API_URL": emu.url})
    assert "not refreshed: BP_PROD_TOKEN is not set" in err, err
    code, out, err = run_cli(["plan", "--no-refresh"], repo, {"BIGPANDA_API_URL": emu.url})
    assert "not refreshed" not in err


@pytest.mark.parametrize("value", ["false", "no"])
def test_active_false_is_flagged_destructive(tmp_path: Path, emu: Emulator, value: str) -> None:
    import json

    repo = kv_repo(tmp_path, "k,v\na,1\n")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    m = repo / "tables" / "kv.yaml"
    m.write_text(m.read_text() + f"active: {value}\n")
    code, out, err = bp(repo, emu, "plan")
    assert code == 0, out + err
    assert "kv (update-in-place)" in out, out
    assert "! active: true → false: the enrichment stops enriching alerts" in out, out
    code, out, err = bp(repo, emu, "plan", "--format", "json")
    (table,) = json.loads(out)["tables"]
    assert table["action"] == "update-in-place" and table["destructive"] is True


def test_damaged_state_says_what_the_backup_loses(tmp_path: Path, emu: Emulator) -> None:
    repo = kv_repo(tmp_path, "k,v\na,1\n")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    (repo / ".bpsync" / "state.json").write_text('{"format_version": 1, "tab')
    code, out, err = bp(repo, emu, "plan")
    assert code == 1
    assert "state.json.bak" in err and "one write older" in err, err
    assert "missing from it" in err
