"""`bpsync fmt [--check]` (SPEC §2, §4 canonical form) through the CLI.

CRLF endings, a missing final newline and needless quotes are valid input (validate exits 0)
but not canonical: `fmt --check` names the file and exits 1, `fmt` rewrites it, and after that
`fmt --check` exits 0. Invalid tables are never rewritten.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import OWNERS_HEADER, make_repo, manifest_yaml, owners_repo, run_cli

CSV = "tables/owners.csv"
CANONICAL = OWNERS_HEADER + 'billing,ana,ops\ncrm,"bo, jr",ops\n'


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (CANONICAL.replace("\n", "\r\n"), "CRLF line endings"),
        (CANONICAL[:-1], "no final newline"),
        (CANONICAL.replace("billing", '"billing"'), "quoting"),
        (CANONICAL.replace("\n", "\r\n")[:-2], "CRLF line endings, no final newline"),
    ],
    ids=["crlf", "no-final-newline", "needless-quotes", "crlf-and-no-final-newline"],
)
def test_non_canonical_valid_table_check_then_fix(
    tmp_path: Path, content: str, reason: str
) -> None:
    root = owners_repo(tmp_path, content)
    path = root / CSV

    code, _, err = run_cli(["validate"], root)
    assert code == 0, err  # valid input

    code, out, err = run_cli(["fmt", "--check"], root)
    assert code == 1
    assert out == f"would reformat {CSV} ({reason})\n"
    assert "run `bpsync fmt`" in err
    assert path.read_bytes() == content.encode()  # --check writes nothing

    code, out, err = run_cli(["fmt"], root)
    assert code == 0, err
    assert out == f"reformatted {CSV} ({reason})\n"
    assert path.read_bytes() == CANONICAL.encode()

    code, out, err = run_cli(["fmt", "--check"], root)
    assert code == 0, err
    assert out == "" and "canonical form" in err


def test_canonical_table_is_left_alone(tmp_path: Path) -> None:
    root = owners_repo(tmp_path, CANONICAL)
    before = os.stat(root / CSV)
    for argv in (["fmt", "--check"], ["fmt"]):
        code, out, err = run_cli(argv, root)
        assert code == 0, err
        assert out == ""
    after = os.stat(root / CSV)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_fmt_keeps_the_file_mode_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = owners_repo(tmp_path, CANONICAL.replace("\n", "\r\n"))
    os.chmod(root / CSV, 0o640)
    assert run_cli(["fmt"], root)[0] == 0
    assert stat.S_IMODE(os.stat(root / CSV).st_mode) == 0o640
    assert sorted(p.name for p in (root / "tables").iterdir()) == ["owners.csv", "owners.yaml"]


def test_fmt_never_rewrites_an_invalid_table(tmp_path: Path) -> None:
    content = (OWNERS_HEADER + "billing,ana,ops\nbilling,ana,ops\n").replace("\n", "\r\n")
    root = owners_repo(tmp_path, content)
    for argv in (["fmt"], ["fmt", "--check"]):
        code, _, err = run_cli(argv, root)
        assert code == 1
        assert f"{CSV}:3: duplicate row (same as line 2)" in err
        assert "left as they are" in err
        assert (root / CSV).read_bytes() == content.encode()
    assert sorted(p.name for p in (root / "tables").iterdir()) == ["owners.csv", "owners.yaml"]


def test_fmt_refuses_when_a_manifest_is_invalid(tmp_path: Path) -> None:
    content = CANONICAL.replace("\n", "\r\n")
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv", extra="bogus: 1\n")},
        tables={"owners.csv": content},
    )
    code, _, err = run_cli(["fmt"], root)
    assert code == 1
    assert "tables/owners.yaml:10:1: unknown key 'bogus'" in err
    assert (root / CSV).read_bytes() == content.encode()


def test_fmt_only_the_selected_table(tmp_path: Path) -> None:
    crlf = CANONICAL.replace("\n", "\r\n")
    root = make_repo(
        tmp_path,
        manifests={"a": manifest_yaml("a.csv", name="a"), "b": manifest_yaml("b.csv", name="b")},
        tables={"a.csv": crlf, "b.csv": crlf},
    )
    code, out, _ = run_cli(["fmt", "--table", "a"], root)
    assert code == 0
    assert out == "reformatted tables/a.csv (CRLF line endings)\n"
    assert (root / "tables" / "a.csv").read_bytes() == CANONICAL.encode()
    assert (root / "tables" / "b.csv").read_bytes() == crlf.encode()

    code, _, err = run_cli(["fmt", "--table", "nope"], root)
    assert code == 64
    assert "known tables: a, b" in err


def test_fmt_check_names_every_non_canonical_file(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={n: manifest_yaml(f"{n}.csv", name=n) for n in ("a", "b", "c")},
        tables={
            "a.csv": CANONICAL.replace("\n", "\r\n"),
            "b.csv": CANONICAL,
            "c.csv": CANONICAL[:-1],
        },
    )
    code, out, err = run_cli(["fmt", "--check"], root)
    assert code == 1
    assert out.splitlines() == [
        "would reformat tables/a.csv (CRLF line endings)",
        "would reformat tables/c.csv (no final newline)",
    ]
    assert "2 table(s) not in canonical form" in err


def test_fmt_output_is_what_validate_accepts_and_digests_the_same(tmp_path: Path) -> None:
    content = '"application","owner","team"\r\n"billing","a|b",""\r\n"crm"," x ","say ""hi"""'
    root = owners_repo(tmp_path, content)
    assert run_cli(["fmt"], root)[0] == 0
    assert (root / CSV).read_text(encoding="utf-8") == (
        OWNERS_HEADER + 'billing,a|b,\ncrm, x ,"say ""hi"""\n'
    )
    code, _, err = run_cli(["validate"], root)
    assert code == 0 and "2 row(s)" in err


def test_fmt_rewrites_the_target_of_a_symlinked_table(tmp_path: Path) -> None:
    root = make_repo(tmp_path, manifests={"owners": manifest_yaml("owners.csv")})
    (root / "data").mkdir()
    (root / "data" / "owners.csv").write_bytes(CANONICAL.replace("\n", "\r\n").encode())
    (root / CSV).symlink_to("../data/owners.csv")
    code, out, _ = run_cli(["fmt"], root)
    assert code == 0
    assert out == "reformatted data/owners.csv (CRLF line endings)\n"
    assert (root / CSV).is_symlink()
    assert (root / "data" / "owners.csv").read_bytes() == CANONICAL.encode()
