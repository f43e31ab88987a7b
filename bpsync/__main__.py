"""The outermost entry (the `bpsync` console script and `python -m bpsync`): Ctrl-C during
start-up exits 130.

Importing the CLI takes a moment; an interrupt then, before `run` catches it, would end in a
traceback. This module imports nothing of bpsync until inside the `try`.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from bpsync.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        try:
            sys.stderr.write("\nError: interrupted\n")
        finally:
            sys.exit(130)


if __name__ == "__main__":
    main()
