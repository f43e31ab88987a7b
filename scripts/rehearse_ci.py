"""Rehearse the pull-request and merge flow of the GitHub workflows, end to end, offline.

    python scripts/rehearse_ci.py [--keep] [--print-comment]

In a temporary git repository holding a copy of this repository's tables, with two
environments, `sandbox` and `prod`, each on its own BigPanda emulator (in this process, on
127.0.0.1), it runs what the workflows run, as real `bpsync` processes:

  setup       bpsync.yaml with two environments; `ci environments` lists them in order;
              two tables are kept in sandbox only (`environments: [sandbox]`)
  bootstrap   apply the shipped tables to each environment; commit .bpsync/ like the apply
              workflow (one state per environment, each bound to its own emulator)
  PR          branch, edit a CSV; `validate --format github`; a broken CSV is annotated
              and fails; per environment `plan --no-refresh --format markdown --out`,
              `show --format json`: one sticky-comment marker and one fingerprint each
  merge       merge; per environment, in order (sandbox first), like the apply matrix:
              `ci fingerprint --from-file` of its own comment, then
              `apply --auto-approve --expect-fingerprint FP`; prod is untouched until
              sandbox is done; a fingerprint reviewed for sandbox is refused for prod;
              commit .bpsync/ with the bot identity and [skip ci]; `plan` says
              `No changes.` (and --detailed-exitcode exits 0)
  mixing      prod's state pointed at sandbox's emulator refuses before any request
  guard       main moves after review: apply with the old fingerprint refuses, applies nothing

Exits 0 printing `rehearsal passed`, else 1 naming the step that misbehaved.
`--print-comment` prints the PR's plan comments (the Markdown the bot would post).
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpsync.emulator import Emulator  # noqa: E402

BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"
TOKEN = "rehearsal-token"
NEW_OWNER = "Ana Souza"
NEW_APP = "payments-gateway"
NEW_ROW = {
    "owner": NEW_OWNER,
    "team": "payments",
    "Runbook URL": "https://wiki.example.com/runbooks/payments-gateway",
}


class Misbehaved(Exception):
    pass


ENVIRONMENTS = ("sandbox", "prod")
SANDBOX_ONLY = ("host-cmdb.yaml", "check-routing.yaml")


class Rehearsal:
    def __init__(self, work: Path, emus: dict[str, Emulator]) -> None:
        self.repo = work / "tables-repo"
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("BIGPANDA_", "BPSYNC_", "GITHUB_"))
            },
            "BIGPANDA_TOKEN": TOKEN,
            "NO_COLOR": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        self.emus = emus
        self.step = "setup"
        self.comments: dict[str, str] = {}

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

    def bpsync(
        self, *args: str, expect: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "bpsync", *args], expect=expect, env=env)

    def in_env(
        self, environment: str, *args: str, expect: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        """`bpsync --env ENV ...`, as the actions' wrapper runs it."""
        return self.bpsync("--env", environment, *args, expect=expect)

    def each_env(self, *args: str, expect: int = 0) -> dict[str, str]:
        """`bpsync --env ENV ...` for every environment at once, where order does not matter
        (the bootstrap, the plans of a pull request, the checks after the apply); `{env}` in
        an argument becomes the environment's name. Their stdout by environment."""
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "bpsync", "--env", name]
                + [a.replace("{env}", name) for a in args],
                cwd=self.repo,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ENVIRONMENTS
        }
        outs = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            if proc.returncode != expect:
                raise Misbehaved(
                    f"`bpsync --env {name} {' '.join(args)}` exited {proc.returncode}, "
                    f"expected {expect}\nstdout:\n{out}\nstderr:\n{err}"
                )
            outs[name] = out
        return outs

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

    def state(self, environment: str) -> dict[str, Any]:
        path = self.repo / ".bpsync" / environment / "state.json"
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def rows(self, environment: str) -> list[dict[str, str]]:
        eid = self.state(environment)["tables"]["service-owners"]["enrichment_id"]
        return self.emus[environment].table_rows(eid) or []

    def uploads(self, environment: str, since: int = 0) -> list[Any]:
        return [r for r in self.emus[environment].requests[since:] if r.path.endswith("/map")]

    # -- the flows --

    def setup(self) -> None:
        self.begin("setup: a table repository with the shipped tables and two environments")
        self.repo.mkdir()
        config = (ROOT / "bpsync.yaml").read_text(encoding="utf-8")
        # Each environment's endpoint lives in bpsync.yaml; here, one emulator each.
        config += "environments:\n" + "".join(
            f"  {name}:\n    api: {{base_url: '{self.emus[name].url}'}}\n" for name in ENVIRONMENTS
        )
        (self.repo / "bpsync.yaml").write_text(config, encoding="utf-8")
        shutil.copytree(ROOT / "tables", self.repo / "tables")
        # A table may exist in some environments only: prod gets service-owners alone.
        for other in SANDBOX_ONLY:
            with (self.repo / "tables" / other).open("a", encoding="utf-8") as f:
                f.write("environments: [sandbox]\n")
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.name", "Rehearsal")
        self.git("config", "user.email", "rehearsal@example.invalid")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "tables")
        # The workflows' matrix; --all because these environments are loopback emulators.
        listed = json.loads(self.bpsync("ci", "environments", "--all").stdout)
        self.check(listed == list(ENVIRONMENTS), f"ci environments listed {listed}")

    def bootstrap(self) -> None:
        self.begin("bootstrap: first apply of the shipped tables, per environment")
        self.each_env("apply", "--auto-approve")
        prod_tables = sorted(self.state("prod")["tables"])
        self.check(prod_tables == ["service-owners"], f"prod has tables {prod_tables}")
        for name in ENVIRONMENTS:
            bound = self.state(name)["endpoint"]["base_url"]
            self.check(bound == self.emus[name].url, f"{name}'s state is bound to {bound}")
        self.commit_state("bpsync: state after first apply [skip ci]")
        self.check(not self.git("status", "--porcelain"), "state left uncommitted")

    def pull_request(self) -> dict[str, str]:
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

        self.begin("PR: plan --out per environment, rendered as markdown and json")
        out = str(self.repo.parent / "plan-{env}.out")
        mds = self.each_env("plan", "--no-refresh", "--format", "markdown", "--out", out)
        jss = self.each_env("show", out, "--format", "json")
        shown = self.each_env("ci", "fingerprint", "--from-file", out)
        fps: dict[str, str] = {}
        for name in ENVIRONMENTS:
            md, js = mds[name], json.loads(jss[name])
            (self.repo.parent / f"plan-{name}.md").write_text(md, encoding="utf-8")
            self.comments[name] = md
            fp = js["fingerprint"]
            self.check(js["environment"] == name, "the json names no environment")
            head = f"<!-- bpsync:plan:{name} -->\n### bpsync plan — <code>{name}</code>"
            self.check(
                md.startswith(head),
                f"the {name} comment lacks its marker or heading:\n{md[:200]}",
            )
            self.check(
                f"Fingerprint: `{fp}`" in md, "markdown and json disagree on the fingerprint"
            )
            closing = "**Plan: 1 table to change; 1 row to add, 1 to change, 1 to remove.**"
            self.check(closing in md, f"unexpected plan:\n{md}")
            self.check(shown[name].strip() == fp, "ci fingerprint of the plan file differs")
            fps[name] = fp
        self.check(fps["sandbox"] != fps["prod"], "both environments have one fingerprint")
        return fps

    def merge(self, fps: dict[str, str]) -> None:
        self.begin("merge: a fingerprint reviewed for sandbox is refused for prod")
        self.git("checkout", "-q", "main")
        self.git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "change-owners")
        before = len(self.emus["prod"].requests)
        refused = self.in_env(
            "prod", "apply", "--auto-approve", "--expect-fingerprint", fps["sandbox"], expect=1
        )
        self.check("fingerprint mismatch" in refused.stderr, f"no refusal:\n{refused.stderr}")
        self.check(not self.uploads("prod", before), "prod was changed with sandbox's approval")

        # The apply matrix: one environment at a time, in bpsync.yaml's order.
        for name in ENVIRONMENTS:
            self.begin(f"merge: {name}: ci fingerprint of its own comment, then apply")
            plan_md = str(self.repo.parent / f"plan-{name}.md")
            approved = self.in_env(name, "ci", "fingerprint", "--from-file", plan_md)
            self.check(
                approved.stdout.strip() == fps[name], "the approved fingerprint is not the plan's"
            )
            later = [n for n in ENVIRONMENTS[ENVIRONMENTS.index(name) + 1 :]]
            self.check(
                all(NEW_APP not in {r.get("application") for r in self.rows(n)} for n in later),
                f"an environment after {name} was applied first",
            )
            self.in_env(name, "apply", "--auto-approve", "--expect-fingerprint", fps[name])
            rows = self.rows(name)
            self.check(
                NEW_APP in {r.get("application") for r in rows}, f"{name} lacks the added row"
            )
            self.check(
                any(r.get("owner") == NEW_OWNER for r in rows), f"{name}: the change is missing"
            )

            self.commit_state(f"bpsync: state after apply to {name} [skip ci]")
            log = self.git("log", "-1", "--format=%an|%s")
            self.check(log.startswith(f"{BOT_NAME}|") and "[skip ci]" in log, f"bad commit: {log}")
            self.check(not self.git("status", "--porcelain"), "files left uncommitted after apply")

        self.begin("merge: plan says No changes. in every environment")
        # Refreshed: BigPanda (each emulator) agrees too; --detailed-exitcode exits 0.
        for name, out in self.each_env("plan", "--refresh", "--detailed-exitcode").items():
            self.check("No changes." in out, f"plan of {name} after apply:\n{out}")

    def mixing(self) -> None:
        self.begin("mixing: prod's state against sandbox's emulator refuses before any request")
        sandbox = self.emus["sandbox"]
        before = len(sandbox.requests)
        refused = self.bpsync(
            "--env", "prod", "plan", env={"BIGPANDA_API_URL": sandbox.url}, expect=1
        )
        self.check("belongs to" in refused.stderr, f"no refusal:\n{refused.stderr}")
        self.check(len(sandbox.requests) == before, "a request reached the wrong emulator")

    def guard(self, fps: dict[str, str]) -> None:
        self.begin("guard: main moved after review, so the old fingerprint refuses")
        csv = self.repo / "tables" / "service-owners.csv"
        with csv.open("a", encoding="utf-8") as f:
            f.write("unreviewed-app," + ",".join(["x"] * (len(self.header()) - 1)) + "\n")
        before = len(self.emus["sandbox"].requests)
        refused = self.in_env(
            "sandbox", "apply", "--auto-approve", "--expect-fingerprint", fps["sandbox"], expect=1
        )
        self.check("fingerprint mismatch" in refused.stderr, f"no refusal:\n{refused.stderr}")
        self.check(not self.uploads("sandbox", before), "an unreviewed table was uploaded")
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
        with (
            Emulator(port=0, job_seconds=0.05, token=TOKEN) as sandbox,
            Emulator(port=0, job_seconds=0.05, token=TOKEN) as prod,
        ):
            r = Rehearsal(work, {"sandbox": sandbox, "prod": prod})
            r.setup()
            r.bootstrap()
            fps = r.pull_request()
            r.merge(fps)
            r.mixing()
            r.guard(fps)
    except Misbehaved as e:
        step = r.step if r else "setup"
        print(f"FAILED at step: {step}\n{e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.print_comment and r is not None:
        for comment in r.comments.values():
            print(comment)
    print(f"rehearsal passed in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
