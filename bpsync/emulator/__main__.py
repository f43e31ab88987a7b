"""`python -m bpsync.emulator`: serve the BigPanda emulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from bpsync.emulator.faults import DEFAULT_JOB_FAILURE
from bpsync.emulator.server import Emulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bpsync.emulator",
        description="Serve an emulator of the BigPanda enrichment API on 127.0.0.1.",
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
    return p


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
