"""Rehearse the pull-request and merge flow of the GitHub workflows, end to end, offline.

    python scripts/rehearse_ci.py [--keep] [--print-comment]

In a temporary git repository holding a copy of this repository's tables, against the
BigPanda emulator (in this process, on 127.0.0.1), it runs what the workflows run, as real
`bpsync` processes:

  bootstrap   apply the shipped tables; commit .bpsync/ like the apply workflow
  PR          branch, edit a CSV; `validate --format github`; a broken CSV is annotated
              and fails; `plan --no-refresh --format markdown --out plan.out`;
              `show plan.out --format json`; both carry one fingerprint
  merge       merge; `ci fingerprint --from-file plan.md`;
              `apply --auto-approve --expect-fingerprint FP`; the emulator holds the new
              rows; commit .bpsync/ with the bot identity and [skip ci];
              `plan` says `No changes.` (and --detailed-exitcode exits 0)
  guard       main moves after review: apply with the old fingerprint refuses, applies nothing

Exits 0 printing `rehearsal passed`, else 1 naming the step that misbehaved.
`--print-comment` prints the PR's plan comment (the Markdown the bot would post).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpsync.emulator import Emulator  # noqa: E402

BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"
TOKEN = "rehearsal-token"
NEW_OWNER = "Ana Souza"
NEW_APP = "payments-gateway"
NEW_ROW = {"owner": NEW_OWNER, "team": "payments",
           "Runbook URL": "https://wiki.example.com/runbooks/payments-gateway"}


class Misbehaved(Exception):
    pass


class Rehearsal:
    def __init__(self, work: Path, emu: Emulator) -> None:
        self.repo = work / "tables-repo"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BIGPANDA_", "GITHUB_"))},
            "BIGPANDA_API_URL": emu.url,
            "BIGPANDA_TOKEN": TOKEN,
            "NO_COLOR": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        self.emu = emu
        self.step = "setup"

    # -- helpers --

    def run(
        self, argv: Sequence[str], *, expect: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(argv),
            cwd=self.repo,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if expect is not None and proc.returncode != expect:
            raise Misbehaved(
                f"`{' '.join(argv)}` exited {proc.returncode}, expected {expect}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def bpsync(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "bpsync", *args], expect=expect)

    def git(self, *args: str) -> str:
        return self.run(["git", *args]).stdout

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise Misbehaved(what)

    def begin(self, step: str) -> None:
        self.step = step
        print(f"-- {step}", flush=True)

    def commit_state(self, message: str) -> None:
        """What the apply workflow's "Commit the state" step does."""
        self.git("add", "--", ".bpsync")
        self.git(
            "-c", f"user.name={BOT_NAME}", "-c", f"user.email={BOT_EMAIL}",
            "commit", "-q", "-m", message,
        )  # fmt: skip

    # -- the flows --

    def setup(self) -> None:
        self.begin("setup: a table repository with the shipped tables")
        self.repo.mkdir()
        shutil.copy2(ROOT / "bpsync.yaml", self.repo / "bpsync.yaml")
        shutil.copytree(ROOT / "tables", self.repo / "tables")
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.name", "Rehearsal")
        self.git("config", "user.email", "rehearsal@example.invalid")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "tables")

    def bootstrap(self) -> None:
        self.begin("bootstrap: first apply of the shipped tables")
        self.bpsync("apply", "--auto-approve")
        self.commit_state("bpsync: state after first apply [skip ci]")
        self.check(not self.git("status", "--porcelain"), "state left uncommitted")

    def pull_request(self) -> tuple[str, str]:
        self.begin("PR: edit a table on a branch")
        self.git("checkout", "-q", "-b", "change-owners")
        csv = self.repo / "tables" / "service-owners.csv"
        lines = csv.read_text(encoding="utf-8").splitlines(keepends=True)
        header = lines[0].rstrip("\n").split(",")
        self.check(len(lines) > 4, "service-owners.csv is too small to rehearse with")
        first = lines[1].rstrip("\n").split(",")
        first[1] = NEW_OWNER  # change the owner of the first row
        lines[1] = ",".join(first) + "\n"
        del lines[2]  # remove the second row
        new_row = [NEW_ROW.get(title, f"value-{i}") for i, title in enumerate(header)]
        new_row[0] = NEW_APP
        lines.append(",".join(new_row) + "\n")
        csv.write_text("".join(lines), encoding="utf-8")
        self.git("commit", "-q", "-am", "Change owners")

        self.begin("PR: validate --format github annotates a broken CSV and fails")
        good = csv.read_bytes()
        csv.write_bytes(good + lines[1].encode())  # duplicate key
        bad = self.bpsync("validate", "--format", "github", expect=1)
        self.check(
            "::error file=tables/service-owners.csv,line=" in bad.stdout,
            f"no annotation on the CSV line:\n{bad.stdout}",
        )
        csv.write_bytes(good)
        ok = self.bpsync("validate", "--format", "github")
        self.check(ok.stdout == "", f"annotations on a valid repository:\n{ok.stdout}")

        self.begin("PR: plan --out, rendered as markdown and json")
        out = self.repo.parent / "plan.out"
        md = self.bpsync("plan", "--no-refresh", "--format", "markdown", "--out", str(out)).stdout
        js = self.bpsync("show", str(out), "--format", "json").stdout
        (self.repo.parent / "plan.md").write_text(md, encoding="utf-8")
        fp = json.loads(js)["fingerprint"]
        self.check(md.startswith("<!-- bpsync:plan -->"), "the comment lacks its marker")
        self.check(f"Fingerprint: `{fp}`" in md, "markdown and json disagree on the fingerprint")
        self.check("**Plan: 1 table to change; 1 row to add, 1 to change, 1 to remove.**" in md,
                   f"unexpected plan:\n{md}")  # fmt: skip
        shown = self.bpsync("ci", "fingerprint", "--from-file", str(out)).stdout.strip()
        self.check(shown == fp, "ci fingerprint of plan.out differs")
        return md, fp

    def merge(self, md: str, fp: str) -> None:
        self.begin("merge: ci fingerprint --from-file plan.md")
        self.git("checkout", "-q", "main")
        self.git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "change-owners")
        plan_md = str(self.repo.parent / "plan.md")
        approved = self.bpsync("ci", "fingerprint", "--from-file", plan_md)
        self.check(approved.stdout.strip() == fp, "the approved fingerprint is not the plan's")

        self.begin("merge: apply --auto-approve --expect-fingerprint")
        self.bpsync("apply", "--auto-approve", "--expect-fingerprint", fp)
        state = json.loads((self.repo / ".bpsync" / "state.json").read_text(encoding="utf-8"))
        eid = state["tables"]["service-owners"]["enrichment_id"]
        rows = self.emu.table_rows(eid) or []
        apps = {r.get("application") for r in rows}
        self.check(NEW_APP in apps, "the emulator lacks the added row")
        self.check(any(r.get("owner") == NEW_OWNER for r in rows), "the change is missing")

        self.begin("merge: commit .bpsync/ with the bot identity and [skip ci]")
        self.commit_state("bpsync: state after apply [skip ci]")
        log = self.git("log", "-1", "--format=%an|%s")
        self.check(log.startswith(f"{BOT_NAME}|") and "[skip ci]" in log, f"bad commit: {log}")
        self.check(not self.git("status", "--porcelain"), "files left uncommitted after apply")

        self.begin("merge: plan says No changes.")
        again = self.bpsync("plan", "--no-refresh")
        self.check("No changes." in again.stdout, f"plan after apply:\n{again.stdout}")
        self.bpsync("plan", "--refresh", "--detailed-exitcode", expect=0)

    def guard(self, fp: str) -> None:
        self.begin("guard: main moved after review, so the old fingerprint refuses")
        csv = self.repo / "tables" / "service-owners.csv"
        with csv.open("a", encoding="utf-8") as f:
            f.write("unreviewed-app," + ",".join(["x"] * (len(self.header()) - 1)) + "\n")
        before = len(self.emu.requests)
        refused = self.bpsync("apply", "--auto-approve", "--expect-fingerprint", fp, expect=1)
        self.check("fingerprint mismatch" in refused.stderr, f"no refusal:\n{refused.stderr}")
        uploads = [r for r in self.emu.requests[before:] if r.path.endswith("/map")]
        self.check(not uploads, "an unreviewed table was uploaded")
        self.git("checkout", "-q", "--", "tables")

    def header(self) -> list[str]:
        csv = self.repo / "tables" / "service-owners.csv"
        return csv.read_text(encoding="utf-8").splitlines()[0].split(",")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--keep", action="store_true", help="keep the temporary repository")
    p.add_argument("--print-comment", action="store_true", help="print the PR's plan comment")
    args = p.parse_args(argv)
    if shutil.which("git") is None:
        print("rehearsal needs git", file=sys.stderr)
        return 1
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bpsync-rehearsal-"))
    r: Rehearsal | None = None
    try:
        with Emulator(port=0, job_seconds=0.05, token=TOKEN) as emu:
            r = Rehearsal(work, emu)
            r.setup()
            r.bootstrap()
            md, fp = r.pull_request()
            r.merge(md, fp)
            r.guard(fp)
    except Misbehaved as e:
        step = r.step if r else "setup"
        print(f"FAILED at step: {step}\n{e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.print_comment:
        print(md)
    print(f"rehearsal passed in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
