"""`bpsync import --generate` and `import --all --generate` against the emulator (SPEC §7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import fast_client_options, make_repo, run_cli

from bpsync.bigpanda.client import BigPandaClient
from bpsync.bigpanda.models import EnrichmentSpec
from bpsync.emulator import Emulator

TOKEN = "tok-import-91b"
V21 = "api:\n  version: v2.1\nmanifests: ['tables/*.yaml']\n"
V1 = "api:\n  version: v1\nmanifests: ['tables/*.yaml']\n"
FIELDS = (
    {"title": "application", "type": "query_tag"},
    {"title": "owner", "type": "result_tag", "override_existing": False},
    {"title": "Runbook URL", "type": "result_tag", "tag_name": "runbook_url"},
)
ROWS = [
    {"application": "billing", "owner": "ana", "Runbook URL": "https://x/1"},
    {"application": "crm, eu", "owner": 'say "hi"', "Runbook URL": "a|b"},
    {"application": "ünïcode", "owner": "", "Runbook URL": "—"},
]


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        assert TOKEN not in out + err


def bp(root: Path, emu: Emulator, *argv: str) -> Run:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    return Run(*run_cli(argv, root, env, client_options=fast_client_options()))


def create(emu: Emulator, name: str, version: str = "v2.1", rows: Any = ROWS, **kw: Any) -> str:
    with BigPandaClient(emu.url, TOKEN, version, **fast_client_options()) as client:
        eid = client.create_enrichment(EnrichmentSpec(name, FIELDS, **kw)).id
    if rows is not None:
        emu.set_table(eid, rows)
    return eid


def files(root: Path) -> list[str]:
    """Every file of the repository, bar the lock's own files in .bpsync/."""
    found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    lock_files = {".bpsync/.gitignore", ".bpsync/lock.guard"}
    return sorted(f for f in found if f not in lock_files)


def state(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / ".bpsync" / "state.json").read_text()))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path, config=V21)


def test_generate_writes_manifest_and_csv_and_plan_says_no_changes(
    repo: Path, emu: Emulator
) -> None:
    eid = create(emu, "Service owners", description="Owners", when="source = nagios")
    r = bp(repo, emu, "import", "owners", eid, "--generate")
    assert r.code == 0, r.err
    manifest = (repo / "tables" / "owners.yaml").read_text()
    assert manifest == (
        "name: owners\nmap_name: Service owners\ndescription: Owners\nactive: true\n"
        "when: source = nagios\ncsv: owners.csv\n"
        f"enrichment_id: {eid}\nfields:\n"
        "- title: application\n  type: query_tag\n"
        "- title: owner\n  type: result_tag\n  override_existing: false\n"
        "- title: Runbook URL\n  type: result_tag\n  tag_name: runbook_url\n"
    )
    assert (repo / "tables" / "owners.csv").read_bytes() == (
        'application,owner,Runbook URL\nbilling,ana,https://x/1\n"crm, eu","say ""hi""",a|b\n'
        "ünïcode,,—\n"
    ).encode()
    table = state(repo)["tables"]["owners"]
    assert table["enrichment_id"] == eid and table["rows"] == 3
    assert table["remote_version"] == emu.enrichment(eid)["version"]  # type: ignore[index]
    plan = bp(repo, emu, "plan", "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err
    assert "No changes." in plan.out
    assert bp(repo, emu, "validate").code == 0


def test_import_all_then_plan_is_clean_and_a_second_run_writes_nothing(
    repo: Path, emu: Emulator
) -> None:
    a = create(emu, "Service owners")
    b = create(emu, "service  OWNERS!")  # the same slug: gets a suffix
    c = create(emu, "Hosts", rows=[{"application": "h", "owner": "o", "Runbook URL": "u"}])
    off = create(emu, "Old table", active=False)
    r = bp(repo, emu, "import", "--all", "--generate")
    assert r.code == 0, r.err
    assert [f for f in files(repo) if not f.startswith(".bpsync")] == [
        "bpsync.yaml",
        "tables/hosts.csv",
        "tables/hosts.yaml",
        "tables/service-owners-2.csv",
        "tables/service-owners-2.yaml",
        "tables/service-owners.csv",
        "tables/service-owners.yaml",
    ]
    ids = {n: t["enrichment_id"] for n, t in state(repo)["tables"].items()}
    assert ids == {"service-owners": a, "service-owners-2": b, "hosts": c}
    assert "Imported 3 of 3" in r.err
    plan = bp(repo, emu, "plan", "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err
    before = {p: (repo / p).read_bytes() for p in files(repo)}
    again = bp(repo, emu, "import", "--all", "--generate")
    assert again.code == 0 and "Nothing to import" in again.err
    assert {p: (repo / p).read_bytes() for p in files(repo)} == before
    inactive = bp(repo, emu, "import", "--all", "--generate", "--include-inactive")
    assert inactive.code == 0, inactive.err
    assert state(repo)["tables"]["old-table"]["enrichment_id"] == off
    assert "active: false" in (repo / "tables" / "old-table.yaml").read_text()
    assert bp(repo, emu, "plan", "--detailed-exitcode").code == 0


@pytest.mark.parametrize("taken", ["name", "csv", "manifest-id", "state-id"])
def test_refuses_without_writing_anything(repo: Path, emu: Emulator, taken: str) -> None:
    eid = create(emu, "Owners")
    other = create(emu, "Other")
    if taken == "name":
        (repo / "tables" / "x.yaml").write_text(
            "name: owners\nmap_name: X\ncsv: x.csv\nfields:\n- {title: a, type: query_tag}\n"
            "- {title: b, type: result_tag}\n"
        )
        (repo / "tables" / "x.csv").write_text("a,b\n1,2\n")
    elif taken == "csv":
        (repo / "tables" / "owners.csv").write_text("mine\n")
    elif taken == "manifest-id":
        (repo / "tables" / "x.yaml").write_text(
            f"map_name: X\ncsv: x.csv\nenrichment_id: {eid}\nfields:\n"
            "- {title: a, type: query_tag}\n- {title: b, type: result_tag}\n"
        )
        (repo / "tables" / "x.csv").write_text("a,b\n1,2\n")
    else:
        assert bp(repo, emu, "import", "first", eid, "--generate").code == 0
    before = {p: (repo / p).read_bytes() for p in files(repo)}
    r = bp(repo, emu, "import", "owners", eid, "--generate")
    assert r.code == 1, r.err
    assert "already" in r.err
    assert {p: (repo / p).read_bytes() for p in files(repo)} == before
    assert other  # the other enrichment stays untouched


def test_unknown_id_fails_clearly_and_writes_nothing(repo: Path, emu: Emulator) -> None:
    r = bp(repo, emu, "import", "owners", "no-such-id", "--generate")
    assert r.code == 1
    assert "no-such-id" in r.err and "does not exist" in r.err and "nothing was written" in r.err
    assert files(repo) == ["bpsync.yaml"]


def test_403_on_the_read_names_the_table_and_the_permission(repo: Path, emu: Emulator) -> None:
    eid = create(emu, "Owners")
    emu.faults.forbid_read()
    r = bp(repo, emu, "import", "owners", eid, "--generate")
    assert r.code == 1
    assert "owners" in r.err and "permission to read" in r.err
    assert files(repo) == ["bpsync.yaml"]


def test_a_page_failing_after_retries_leaves_nothing(repo: Path, emu: Emulator) -> None:
    rows = [{"application": f"a{i}", "owner": "o", "Runbook URL": "u"} for i in range(250)]
    eid = create(emu, "Owners", rows=rows)
    emu.faults.fail_read_pages(100, status=503, page=1)
    r = bp(repo, emu, "import", "owners", eid, "--generate")
    assert r.code == 1
    assert "owners" in r.err and "gave up" in r.err
    assert files(repo) == ["bpsync.yaml"]


def test_a_total_that_keeps_moving_fails_and_leaves_nothing(repo: Path, emu: Emulator) -> None:
    rows = [{"application": f"a{i}", "owner": "o", "Runbook URL": "u"} for i in range(2500)]
    eid = create(emu, "Owners", rows=rows)
    emu.faults.move_total_between_pages(times=None)
    r = bp(repo, emu, "import", "owners", eid, "--generate")
    assert r.code == 1
    assert "owners" in r.err and "kept changing" in r.err
    assert files(repo) == ["bpsync.yaml"]


def test_a_capped_page_size_and_null_cells_still_read_everything(repo: Path, emu: Emulator) -> None:
    rows = [{"application": f"a{i:04d}", "owner": "", "Runbook URL": "u"} for i in range(333)]
    eid = create(emu, "Owners", rows=rows)
    emu.faults.cap_per_page(50)
    emu.faults.empty_as_null()
    emu.faults.set_count_key("total_count")
    assert bp(repo, emu, "import", "owners", eid, "--generate").code == 0
    lines = (repo / "tables" / "owners.csv").read_text().splitlines()
    assert len(lines) == 334 and lines[1] == "a0000,,u"


def test_v1_needs_csv_and_writes_nothing_without_it(tmp_path: Path, emu: Emulator) -> None:
    root = make_repo(tmp_path, config=V1)
    eid = create(emu, "Owners", version="v1", rows=None)
    r = bp(root, emu, "import", "owners", eid, "--generate")
    assert r.code == 1 and "--csv" in r.err
    assert files(root) == ["bpsync.yaml"]
    export = tmp_path / "export.csv"
    export.write_bytes(b"\xef\xbb\xbfapplication,owner,Runbook URL\r\nbilling,ana,u\r\n")
    r = bp(root, emu, "import", "owners", eid, "--generate", "--csv", str(export))
    assert r.code == 0, r.err
    assert (root / "tables" / "owners.csv").read_bytes() == (
        b"application,owner,Runbook URL\nbilling,ana,u\n"
    )
    assert "when" not in (root / "tables" / "owners.yaml").read_text()
    # v1 cannot know BigPanda's rows: the plan shows them as to be uploaded... unless the
    # export is taken as the snapshot, which it is (SPEC §7).
    assert bp(root, emu, "plan", "--detailed-exitcode").code == 0


def test_broken_rows_are_written_then_reported(repo: Path, emu: Emulator) -> None:
    dup = [ROWS[0], ROWS[0]]
    eid = create(emu, "Owners", rows=dup)
    r = bp(repo, emu, "import", "owners", eid, "--generate")
    assert r.code == 1
    assert "owners.csv:3" in r.err and "duplicate" in r.err.lower()
    assert (repo / "tables" / "owners.yaml").exists()
    assert state(repo)["tables"]["owners"]["enrichment_id"] == eid


def test_dir_outside_the_manifest_patterns_is_refused(repo: Path, emu: Emulator) -> None:
    eid = create(emu, "Owners")
    r = bp(repo, emu, "import", "owners", eid, "--generate", "--dir", "elsewhere")
    assert r.code == 1 and "--dir" in r.err
    assert files(repo) == ["bpsync.yaml"]


def test_usage_errors(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "import", "only-a-name").code == 64
    assert bp(repo, emu, "import", "--all").code == 64
    assert bp(repo, emu, "import", "a", "b", "--csv", "x").code == 64


def test_bigpandas_own_spelling_of_the_fields_still_plans_no_changes(
    repo: Path, emu: Emulator
) -> None:
    fields = (
        {"title": "application", "type": "query_tag", "tag_name": "application"},
        {"title": "owner", "type": "result_tag"},
    )
    with BigPandaClient(emu.url, TOKEN, "v2.1", **fast_client_options()) as client:
        eid = client.create_enrichment(EnrichmentSpec("Owners", fields)).id
    emu.set_table(eid, [{"application": "a", "owner": "b"}])
    assert bp(repo, emu, "import", "owners", eid, "--generate").code == 0
    assert "tag_name" not in (repo / "tables" / "owners.yaml").read_text()
    plan = bp(repo, emu, "plan", "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err
