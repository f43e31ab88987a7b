"""What bpsync says when something is off (issue 13, defect 6 and item 7): every message
names the file, the line and the fix, and none is a Python exception's name."""

from __future__ import annotations

from pathlib import Path

from helpers import make_repo, manifest_yaml, run_cli
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
    assert not [line for line in out.splitlines() if line.startswith("  ~ ")], out
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
