"""An emulator of BigPanda's mapping-enrichment API, for tests and for rehearsing `apply`.

    python -m bpsync.emulator --port 8471            # serve on http://127.0.0.1:8471
    BIGPANDA_API_URL=http://127.0.0.1:8471 BIGPANDA_TOKEN=anything bpsync apply

From Python (tests):

    with Emulator(port=0, job_seconds=0.2) as emu:
        emu.faults.fail_next_requests(2, status=503, path_contains="/map")
        ...  # talk to emu.url, then inspect emu.requests, emu.table_rows(id)

v2.1 also serves the paged table read (`GET …/mapping-enrichment/{id}/map?page=&per_page=`),
bent by `emu.faults` (`cap_per_page`, `set_count_key`, `empty_as_null`, `forbid_read`,
`fail_read_pages`, `move_total_between_pages`). A test plays a person in BigPanda's UI with
`emu.set_table`, `put_rows`, `delete_rows`, `deactivate`, `rename`, `delete_enrichment`
(shell rehearsals: the `/_emulator/...` routes, see `python -m bpsync.emulator --help`).

It plays BigPanda independently of bpsync's own validator (SPEC §6); see `server`, `store`,
`csvcheck` and `faults`.
"""

from bpsync.emulator.faults import Faults
from bpsync.emulator.server import Emulator, RecordedRequest

__all__ = ["Emulator", "Faults", "RecordedRequest"]
