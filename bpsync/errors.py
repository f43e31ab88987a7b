"""Every error bpsync raises, in one tree.

    BpsyncError                      any failure; the CLI prints it and exits 1
    ├── UsageError                   bad command line; exit 64
    ├── ConfigError                  bpsync.yaml is wrong or missing a setting
    ├── InvalidInput                 manifests/CSVs break rules; carries Problems
    ├── StateError                   the state backend cannot be read or written
    │   ├── StateCorrupt             a state file is damaged (never treated as empty)
    │   └── LockHeld                 another command holds the state lock
    ├── PlanError                    a plan cannot be made, saved, or applied
    │   ├── StalePlan                a saved plan no longer matches its inputs
    │   └── ApplyRefused             guard refused (mass delete, fingerprint, no approval)
    ├── ApiError                     BigPanda said no, or could not be reached
    │   ├── AuthError                401/403
    │   ├── NotFoundError            404
    │   ├── JobFailed                an upload job ended `failed`
    │   ├── VerifyFailed             `apply --verify`: BigPanda does not hold what was sent
    │   └── JobTimeout               the wait deadline passed; the job may still finish

Messages are built by the exceptions themselves so the CLI only prints them. No
message may contain a token: the client never passes one in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about an input file, located as precisely as we can."""

    path: str
    line: int | None
    col: int | None
    message: str
    hint: str = ""
    severity: str = "error"  # "error" | "warning"

    @property
    def location(self) -> str:
        loc = self.path
        if self.line is not None:
            loc += f":{self.line}"
            if self.col is not None:
                loc += f":{self.col}"
        return loc

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return text


def display_path(path: Path | str, root: Path | None = None) -> str:
    """A path as users should see it: relative to the project root when inside it."""
    p = Path(path)
    if root is not None:
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(p)


class BpsyncError(Exception):
    """Base of every error bpsync reports to users."""

    exit_code = 1

    def __init__(self, message: str = "", *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        if self.hint:
            return f"{self.message}\n  {self.hint}"
        return self.message


class UsageError(BpsyncError):
    exit_code = 64


class ConfigError(BpsyncError):
    pass


class InvalidInput(BpsyncError):
    """Manifests or tables break rules. Holds every problem found, not only the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        errors = sum(1 for p in self.problems if p.severity == "error")
        super().__init__(f"{errors} problem(s) found in manifests or tables")


class StateError(BpsyncError):
    pass


class StateCorrupt(StateError):
    pass


class LockHeld(StateError):
    pass


class PlanError(BpsyncError):
    pass


class StalePlan(PlanError):
    pass


class ApplyRefused(PlanError):
    pass


class ApiError(BpsyncError):
    def __init__(self, message: str, *, hint: str = "", status: int | None = None) -> None:
        self.status = status
        super().__init__(message, hint=hint)


class AuthError(ApiError):
    pass


class NotFoundError(ApiError):
    pass


class JobFailed(ApiError):
    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"BigPanda job {job_id} failed: {reason}")


class VerifyFailed(ApiError):
    pass


class JobTimeout(ApiError):
    def __init__(self, job_id: str, waited: float, status: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"gave up waiting on job {job_id} after {waited:.0f}s (last status: {status})",
            hint="the job may still complete; the next `bpsync apply` re-attaches to it "
            "instead of uploading again",
        )


class Interrupted(BpsyncError):
    """The user pressed Ctrl-C (twice while apply waits on jobs: stop waiting)."""

    exit_code = 130
