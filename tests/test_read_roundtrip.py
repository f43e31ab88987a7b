"""Cells survive BigPanda → CSV → upload byte-exactly in canonical form (SPEC §4, §7):
`|`, commas, quotes and non-ASCII text, read back by the paged read and uploaded again."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import fast_client_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync.bigpanda.client import BigPandaClient
from bpsync.bigpanda.models import EnrichmentSpec
from bpsync.emulator import Emulator
from bpsync.table import format_row

FIELDS = ({"title": "key", "type": "query_tag"}, {"title": "value", "type": "result_tag"})
SPECIALS = ["|", ",", '"', "é", "日本", "🐼", " ", "'", ";", "\t", "null"]
cell = st.lists(
    st.one_of(
        st.sampled_from(SPECIALS),
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=4),
    ),
    max_size=5,
).map("".join)
tables = st.dictionaries(cell.filter(bool), cell, min_size=1, max_size=30)


def canonical(rows: dict[str, str]) -> bytes:
    lines = [format_row(["key", "value"])] + [format_row([k, v]) for k, v in rows.items()]
    return ("\n".join(lines) + "\n").encode("utf-8")


@pytest.fixture(scope="module")
def shared_emu() -> Iterator[Emulator]:
    with Emulator(port=0, job_seconds=0.0, rate_limit=False) as emu:
        emu.faults.cap_per_page(7)  # several pages per table
        yield emu


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=tables)
def test_cells_round_trip_byte_exactly(shared_emu: Emulator, rows: dict[str, str]) -> None:
    emu = shared_emu
    with (
        BigPandaClient(emu.url, "tok", "v2.1", **fast_client_options()) as client,
        tempfile.TemporaryDirectory() as tmp,
    ):
        eid = client.create_enrichment(EnrichmentSpec("t", FIELDS)).id
        emu.set_table(eid, [{"key": k, "value": v} for k, v in rows.items()])
        read = Path(tmp) / "read.csv"
        result = client.read_table(eid, ("key", "value"), read, table="t")
        assert result.rows == len(rows)
        assert read.read_bytes() == canonical(rows)
        other = client.create_enrichment(EnrichmentSpec("u", FIELDS)).id
        receipt = client.upload_table(other, read)
        client.wait_for_job(receipt, timeout=10)
        assert receipt.sha256 == hashlib.sha256(canonical(rows)).hexdigest()
        assert emu.table_rows(other) == [{"key": k, "value": v} for k, v in rows.items()]
