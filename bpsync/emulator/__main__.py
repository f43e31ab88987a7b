"""`python -m bpsync.emulator`: serve the BigPanda emulator until Ctrl-C or SIGTERM.

Besides BigPanda's routes it answers a few of its own under `/_emulator` (same Bearer auth,
no rate limit, no injected faults), to play a person editing BigPanda's UI during a rehearsal;
see ADMIN_HELP.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from bpsync.bigpanda import facts
from bpsync.emulator.faults import DEFAULT_JOB_FAILURE
from bpsync.emulator.server import Emulator

ADMIN_HELP = """\
behind bpsync's back (as a person in BigPanda's UI; no upload job):
  POST   /_emulator/enrichments/ID/table   CSV body (header = the field titles): replace the table
  GET    /_emulator/enrichments/ID/table   {"rows": [...]}: the current table
  POST   /_emulator/enrichments/ID/rows    {"put": [rows], "delete": [keys]}: add or change rows
                                           by their query_tag cells, remove rows by key
  PATCH  /_emulator/enrichments/ID         {"active": false, "name": "new map name"}
  DELETE /_emulator/enrichments/ID         remove the enrichment and its table
  A table change raises `version`; add ?bump_version=false to keep it.

example:
  curl -H 'Authorization: Bearer x' --data-binary @owners.csv \\
       http://127.0.0.1:8471/_emulator/enrichments/ID/table
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bpsync.emulator",
        description="Serve an emulator of the BigPanda enrichment API on 127.0.0.1.",
        epilog=ADMIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8471, help="TCP port; 0 picks a free one")
    p.add_argument("--token", help="accept only this Bearer token (default: any non-empty one)")
    p.add_argument("--data-dir", type=Path, help="keep enrichments, tables and jobs here")
    p.add_argument("--job-seconds", type=float, default=0.3, help="how long a job takes")
    p.add_argument("--latency", type=float, default=0.0, help="delay every request (seconds)")
    p.add_argument("--errors-5xx", type=int, default=0, metavar="N", help="next N answers 503")
    p.add_argument("--errors-429", type=int, default=0, metavar="N", help="next N answers 429")
    p.add_argument("--fail-next-jobs", type=int, default=0, metavar="N")
    p.add_argument("--fail-reason", default=DEFAULT_JOB_FAILURE, help="reason of failed jobs")
    p.add_argument("--hang-jobs", action="store_true", help="jobs start and never finish")
    p.add_argument(
        "--drop-upload-after", type=int, metavar="BYTES", help="cut the next upload after BYTES"
    )
    p.add_argument("--absolute-location", action="store_true", help="absolute job URLs")
    p.add_argument("--no-rate-limit", action="store_true", help="disable the 5 req/s limit")
    _read_flags(p.add_argument_group("v2.1 table read (GET …/mapping-enrichment/ID/map)"))
    return p


def _read_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--max-per-page", type=int, metavar="N", help="serve at most N rows a page")
    g.add_argument(
        "--count-key",
        choices=facts.READ_COUNT_KEYS,
        default=facts.READ_COUNT_KEYS[0],
        help="the key announcing the row count (default: %(default)s)",
    )
    g.add_argument("--empty-as-null", action="store_true", help="empty cells as JSON null")
    g.add_argument("--forbid-read", action="store_true", help="reads answer 403")
    g.add_argument(
        "--fail-read-pages", type=int, default=0, metavar="N", help="next N reads answer 5xx"
    )
    g.add_argument(
        "--fail-read-status", type=int, default=503, metavar="CODE", help="(default: 503)"
    )
    g.add_argument("--fail-read-page", type=int, metavar="P", help="fail only reads of page P")
    g.add_argument(
        "--move-total",
        choices=("once", "always"),
        help="the table gains a row after a page is served: once, or after every page",
    )


def _arm(emu: Emulator, args: argparse.Namespace) -> None:
    if args.errors_5xx:
        emu.faults.fail_next_requests(args.errors_5xx, status=503)
    if args.errors_429:
        emu.faults.fail_next_requests(args.errors_429, status=429)
    if args.fail_next_jobs:
        emu.faults.fail_next_jobs(args.fail_next_jobs, reason=args.fail_reason)
    if args.hang_jobs:
        emu.faults.hang_jobs(True)
    if args.drop_upload_after is not None:
        emu.faults.drop_upload_after(args.drop_upload_after)
    if args.fail_read_pages:
        emu.faults.fail_read_pages(
            args.fail_read_pages, status=args.fail_read_status, page=args.fail_read_page
        )
    if args.move_total:
        emu.faults.move_total_between_pages(1 if args.move_total == "once" else None)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    emu = Emulator(
        args.port,
        token=args.token,
        data_dir=args.data_dir,
        job_seconds=args.job_seconds,
        rate_limit=not args.no_rate_limit,
        latency=args.latency,
        absolute_location=args.absolute_location,
        max_per_page=args.max_per_page,
        count_key=args.count_key,
        empty_as_null=args.empty_as_null,
        forbid_read=args.forbid_read,
    )
    _arm(emu, args)
    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with emu:
        print(f"bpsync emulator serving {emu.url}", flush=True)
        print(f"  BIGPANDA_API_URL={emu.url}", flush=True)
        stopped.wait()
    print("bpsync emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
