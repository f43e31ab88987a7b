"""Ctrl-C answers (issue 13, defect 3): the first interrupt says what happens and stops starting
new work, the second stops waiting within a second and says which jobs are left pending; the
prompt cancels cleanly on Ctrl-C or Ctrl-D; an interrupt during start-up exits 130 quietly."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from helpers import fast_client_options, make_repo, manifest_yaml

from bpsync.cli import run
from bpsync.console import Console
from bpsync.emulator import Emulator
from bpsync.interrupt import FIRST, Interrupts

TOKEN = "tok-interrupt-5521"
EMULATOR_OPTIONS = {"job_seconds": 0.0, "token": TOKEN}
FIELDS = (("application", "query_tag", None), ("owner", "result_tag", None))


def two_tables(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path,
        manifests={
            "alpha": manifest_yaml("alpha.csv", FIELDS, map_name="Alpha"),
            "beta": manifest_yaml("beta.csv", FIELDS, map_name="Beta"),
        },
        tables={
            "alpha.csv": "application,owner\na,ana\n",
            "beta.csv": "application,owner\nb,bo\n",
        },
    )


def env_for(emu: Emulator) -> dict[str, str]:
    return {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}


def accepted_uploads(emu: Emulator) -> int:
    return sum(1 for r in emu.requests if r.path.endswith("/map") and r.status == 202)


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def pending_jobs(repo: Path) -> dict[str, str]:
    tables = json.loads((repo / ".bpsync" / "state.json").read_text())["tables"]
    return {
        name: t["pending"]["job_id"]
        for name, t in tables.items()
        if t.get("pending") and t["pending"]["job_id"]
    }


def test_first_interrupt_says_so_and_starts_nothing_new_second_stops_waiting(
    tmp_path: Path, emu: Emulator
) -> None:
    repo = two_tables(tmp_path)
    emu.faults.hang_jobs(True)  # the first table's job never finishes
    notes: list[tuple[float, str]] = []
    interrupts = Interrupts(lambda text: notes.append((time.monotonic(), text)))
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []

    def apply() -> None:
        result.append(
            run(
                ["apply", "--auto-approve", "--parallelism", "1"],
                env=env_for(emu),
                cwd=repo,
                console=Console(out=out, err=err),
                stdin_isatty=False,
                client_options=fast_client_options(poll_max=5.0),  # long sleeps between polls
                interrupts=interrupts,
            )
        )

    worker = threading.Thread(target=apply)
    worker.start()
    wait_until(lambda: accepted_uploads(emu) == 1)
    time.sleep(0.2)  # polling the hung job now
    first = time.monotonic()
    interrupts()
    assert notes and notes[0][1] == FIRST and notes[0][0] - first < 0.1
    time.sleep(0.5)
    assert worker.is_alive(), "the first interrupt keeps waiting on the running job"
    second = time.monotonic()
    interrupts()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - second < 1.0, "the second interrupt stops waiting within 1 s"
    assert result == [130], out.getvalue() + err.getvalue()
    assert accepted_uploads(emu) == 1, "beta was never started"
    pending = pending_jobs(repo)
    assert list(pending) == ["alpha"]
    text = out.getvalue() + err.getvalue()
    assert f"stopped waiting on job {pending['alpha']}" in text, text
    summary = out.getvalue()
    assert "Apply interrupted. Applied: nothing" in summary, summary
    assert "left pending (the next apply re-attaches to the job): alpha" in summary
    assert "not started: beta" in summary


def test_real_sigint_twice_during_apply(tmp_path: Path, emu: Emulator) -> None:
    repo = two_tables(tmp_path)
    emu.faults.hang_jobs(True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGPANDA_", "BPSYNC_"))}
    env.update(env_for(emu))
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bpsync", "-C", str(repo), "apply", "--auto-approve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            wait_until(lambda: accepted_uploads(emu) == 2)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            wait_until(lambda: FIRST in log.read_text(), timeout=1.0)
            time.sleep(0.3)
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            stopped = time.monotonic()
            stdout, _ = proc.communicate(timeout=5)
            assert time.monotonic() - stopped < 1.5
        finally:
            if proc.poll() is None:
                proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, stdout + err
    assert "Traceback" not in err
    assert TOKEN not in stdout + err
    pending = pending_jobs(repo)
    assert sorted(pending) == ["alpha", "beta"]
    for name, job in pending.items():
        assert f"{name}: stopped waiting on job {job}" in err
    assert "left pending (the next apply re-attaches to the job): alpha, beta" in stdout


def confirm_with(tmp_path: Path, emu: Emulator, answer: BaseException) -> tuple[int, str]:
    repo = two_tables(tmp_path)

    def read_line() -> str:
        raise answer

    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["apply"],
        env=env_for(emu),
        cwd=repo,
        console=Console(out=out, err=err),
        stdin_isatty=True,
        client_options=fast_client_options(),
        read_line=read_line,
    )
    assert not [r for r in emu.requests if r.method in ("POST", "PATCH")]
    return code, out.getvalue() + err.getvalue()


def test_ctrl_d_at_the_prompt_cancels_cleanly(tmp_path: Path, emu: Emulator) -> None:
    code, text = confirm_with(tmp_path, emu, EOFError())
    assert code == 1
    assert "apply cancelled" in text and "nothing was changed" in text
    assert "EOFError" not in text and "unexpected" not in text


def test_ctrl_c_at_the_prompt_cancels_cleanly(tmp_path: Path, emu: Emulator) -> None:
    code, text = confirm_with(tmp_path, emu, KeyboardInterrupt())
    assert code == 1
    assert "apply cancelled" in text and "nothing was changed" in text
    assert "Traceback" not in text


# A real SIGINT while the CLI is being imported, before any handler of bpsync's exists.
STARTUP = """
import os, signal, sys

class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "bpsync.cli":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Hook())
sys.argv = ["bpsync", "--version"]
import runpy
runpy.run_module("bpsync", run_name="__main__")
"""


def test_interrupt_during_start_up_exits_130_without_a_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted" in proc.stderr
