"""Big tables and git: Git LFS pointers, `csv: table.csv.gz`, and snapshots too big for git."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import OWNERS_HEADER, fast_client_options, make_repo, manifest_yaml, run_cli

from bpsync.bigpanda import facts
from bpsync.emulator import Emulator
from bpsync.errors import StateError
from bpsync.state import local
from bpsync.state.local import LocalBackend, tracked_by_git
from bpsync.state.snapshot import encode_snapshot, encoded_size

TOKEN = "tok-bigtables-41d9"
ROWS = "billing,ana,payments\ncrm,ravi,sales\n"
LFS = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 148000000\n"
)


def gz(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return gzip.compress(raw, mtime=0)


def gz_repo(tmp_path: Path, content: bytes, name: str = "owners.csv.gz") -> Path:
    return make_repo(tmp_path, manifests={"owners": manifest_yaml(name)}, tables={name: content})


def bp(root: Path, emu: Emulator, *argv: str) -> tuple[int, str, str]:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    code, out, err = run_cli(argv, root, env, client_options=fast_client_options())
    assert TOKEN not in out + err
    return code, out, err


# -- Git LFS pointers --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["owners.csv", "owners.csv.gz"])
def test_an_lfs_pointer_is_one_problem_in_validate_saying_what_to_do(
    tmp_path: Path, name: str
) -> None:
    root = gz_repo(tmp_path, LFS.encode(), name)
    code, _, err = run_cli(["validate"], root)
    assert code == 1
    problems = [line for line in err.splitlines() if line.startswith("Error: tables/")]
    assert problems == [
        f"Error: tables/{name}:1:1: {name} is a Git LFS pointer, not the table (its content "
        "was not fetched) — run `git lfs pull`, and set `lfs: true` on actions/checkout in CI"
    ]
    assert "column" not in err


def test_an_lfs_pointer_stops_plan_and_apply_before_any_request(
    tmp_path: Path, emu: Emulator
) -> None:
    root = gz_repo(tmp_path, LFS.encode(), "owners.csv")
    for argv in (["plan"], ["apply", "--auto-approve"]):
        code, out, err = bp(root, emu, *argv)
        assert code == 1, out + err
        assert "owners.csv is a Git LFS pointer" in err and "git lfs pull" in err
        assert "column" not in err
    assert not [r for r in emu.requests if r.method != "GET"]


# -- compressed tables ----------------------------------------------------------------------


def test_a_gzip_table_validates_plans_and_uploads_the_uncompressed_canonical_table(
    tmp_path: Path, emu: Emulator
) -> None:
    # CRLF inside the .gz: the upload is the canonical form, LF, not the compressed bytes.
    root = gz_repo(tmp_path, gz((OWNERS_HEADER + ROWS).replace("\n", "\r\n")))
    code, _, err = run_cli(["validate"], root)
    assert code == 0, err
    assert "2 row(s)" in err
    code, out, err = bp(root, emu, "plan", "--format", "json")
    assert code == 0, err
    table = json.loads(out)["tables"][0]
    assert (table["action"], table["rows"]["added"]) == ("create", 2)
    code, out, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    [upload] = [r for r in emu.requests if r.method == "POST" and r.path.endswith("/map")]
    canonical = (OWNERS_HEADER + ROWS).encode()
    assert upload.sha256 == hashlib.sha256(canonical).hexdigest()
    assert upload.body_bytes == len(canonical)
    assert "No changes." in bp(root, emu, "plan")[1]


def test_compressing_or_decompressing_an_applied_table_is_not_a_change(
    tmp_path: Path, emu: Emulator
) -> None:
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": OWNERS_HEADER + ROWS},
    )
    assert bp(root, emu, "apply", "--auto-approve")[0] == 0
    tables = root / "tables"
    (tables / "owners.csv.gz").write_bytes(gz((tables / "owners.csv").read_bytes()))
    (tables / "owners.csv").unlink()
    (tables / "owners.yaml").write_text(manifest_yaml("owners.csv.gz"))
    code, out, err = bp(root, emu, "plan", "--detailed-exitcode")
    assert code == 0, out + err
    assert "No changes." in out


def test_a_truncated_gzip_table_is_named(tmp_path: Path) -> None:
    whole = gz(OWNERS_HEADER + "".join(f"app{i},ana,payments\n" for i in range(5000)))
    root = gz_repo(tmp_path, whole[: len(whole) // 2])
    code, _, err = run_cli(["validate"], root)
    assert code == 1
    assert "tables/owners.csv.gz: owners.csv.gz is truncated or damaged" in err
    assert "gzip" in err


def test_a_gz_name_on_a_plain_file_is_named(tmp_path: Path) -> None:
    root = gz_repo(tmp_path, (OWNERS_HEADER + ROWS).encode())
    code, _, err = run_cli(["validate"], root)
    assert code == 1
    assert "owners.csv.gz is not gzip-compressed, yet its name ends in .gz" in err
    assert "invalid UTF-8" not in err


def test_the_size_limit_applies_to_the_decompressed_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = OWNERS_HEADER + "".join(f"app{i},ana,payments\n" for i in range(20000))
    root = gz_repo(tmp_path, gz(table))
    assert (root / "tables" / "owners.csv.gz").stat().st_size < 100_000 < len(table)
    monkeypatch.setattr(facts, "MAX_FILE_BYTES", 100_000)
    code, _, err = run_cli(["validate"], root)
    assert code == 1
    assert "the table is more than 100,000 bytes once decompressed" in err


def test_a_bom_inside_a_gzip_table_is_found(tmp_path: Path) -> None:
    root = gz_repo(tmp_path, gz(b"\xef\xbb\xbf" + (OWNERS_HEADER + ROWS).encode()))
    code, _, err = run_cli(["validate"], root)
    assert code == 1
    assert "tables/owners.csv.gz:1:1: the file starts with a UTF-8 byte order mark" in err


def test_fmt_keeps_a_gzip_table_compressed_and_rewrites_it_only_when_not_canonical(
    tmp_path: Path,
) -> None:
    root = gz_repo(tmp_path, gz((OWNERS_HEADER + ROWS).replace("\n", "\r\n")))
    path = root / "tables" / "owners.csv.gz"
    code, out, err = run_cli(["fmt"], root)
    assert code == 0, err
    assert "reformatted tables/owners.csv.gz (CRLF line endings)" in out
    assert gzip.decompress(path.read_bytes()) == (OWNERS_HEADER + ROWS).encode()
    # Canonical inside: the compressed bytes (the user's choice of level) are left alone.
    path.write_bytes(gzip.compress((OWNERS_HEADER + ROWS).encode(), compresslevel=9, mtime=7))
    before = path.read_bytes()
    code, _, err = run_cli(["fmt", "--check"], root)
    assert code == 0, err
    assert run_cli(["fmt"], root)[0] == 0
    assert path.read_bytes() == before


# -- snapshots too big for git --------------------------------------------------------------


def test_encoded_size_is_the_size_of_the_stored_snapshot(tmp_path: Path) -> None:
    data = ("application,owner\n" + "".join(f"a{i},o{i % 7}\n" for i in range(30000))).encode()
    source = tmp_path / "t.csv"
    source.write_bytes(data)
    _, stream = encode_snapshot(source.open("rb"), hashlib.sha256(data).hexdigest())
    with stream:
        stored = stream.read()
    assert encoded_size([data[:1000], data[1000:]]) == len(stored)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_tracked_by_git_means_inside_a_work_tree_and_not_ignored(tmp_path: Path) -> None:
    assert not tracked_by_git(tmp_path / ".bpsync")  # no repository
    _git(tmp_path, "init", "-q")
    assert tracked_by_git(tmp_path / ".bpsync")  # would be committed by `git add`
    (tmp_path / ".gitignore").write_text(".bpsync/\n")
    assert not tracked_by_git(tmp_path / ".bpsync")


class Warnings(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)


def test_small_snapshots_are_not_even_measured(tmp_path: Path) -> None:
    warnings = Warnings()

    def measure() -> int:
        raise AssertionError("measured a small table")

    LocalBackend(tmp_path / ".bpsync").check_snapshot_room("t", 40_000_000, measure, warnings)
    assert warnings == []


@needs_git
def test_a_big_snapshot_warns_and_past_95_mb_in_git_is_refused_naming_s3(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    backend = LocalBackend(tmp_path / ".bpsync")
    warnings = Warnings()
    backend.check_snapshot_room("t", 600_000_000, lambda: 60_000_000, warnings)
    [warning] = warnings
    assert "the snapshot of table t takes 60.0 MB" in warning and "S3" in warning
    with pytest.raises(StateError) as e:
        backend.check_snapshot_room("t", 600_000_000, lambda: 96_000_000, warnings)
    assert "96.0 MB" in e.value.render() and "nothing was uploaded" in e.value.render()
    assert "backend: s3" in e.value.render()
    # Not kept by git (ignored, or no repository): a warning only.
    (tmp_path / ".gitignore").write_text(".bpsync/\n")
    backend.check_snapshot_room("t", 600_000_000, lambda: 96_000_000, warnings)
    assert len(warnings) == 2


@needs_git
def test_apply_refuses_a_snapshot_too_big_for_git_before_any_upload(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = OWNERS_HEADER + "".join(f"app{i},owner{i},team{i % 13}\n" for i in range(3000))
    root = make_repo(
        tmp_path, manifests={"owners": manifest_yaml("owners.csv")}, tables={"owners.csv": table}
    )
    _git(root, "init", "-q")
    monkeypatch.setattr(local, "SNAPSHOT_WARN_BYTES", 1000)
    monkeypatch.setattr(local, "SNAPSHOT_REFUSE_BYTES", 2000)
    code, out, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 1, out + err
    assert "refusing to apply table owners: its snapshot would take" in err
    assert "state migrate --to s3" in err
    assert not [r for r in emu.requests if r.method == "POST"]
    assert not (root / ".bpsync" / "snapshots").exists() or not any(
        (root / ".bpsync" / "snapshots").iterdir()
    )


@needs_git
def test_a_committed_state_directory_counts_as_tracked_even_if_ignored_later(
    tmp_path: Path,
) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".bpsync").mkdir()
    (tmp_path / ".bpsync" / "state.json").write_text("{}")
    _git(tmp_path, "add", ".bpsync")
    (tmp_path / ".gitignore").write_text(".bpsync/\n")
    assert tracked_by_git(tmp_path / ".bpsync")
