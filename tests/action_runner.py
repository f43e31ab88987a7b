"""Runs a composite action of .github/actions on this machine, the way the GitHub runner does,
for the subset of the workflow syntax these actions use.

Each `run:` step is executed by `bash --noprofile --norc -eo pipefail` (GitHub's `shell:
bash`) in its `working-directory`, with its `env:` evaluated, `GITHUB_OUTPUT`,
`GITHUB_STEP_SUMMARY`, `GITHUB_ACTION_PATH` and friends set; its `if:` is evaluated with the
status functions; outputs are read back from the `GITHUB_OUTPUT` files. Expressions support
what the actions use: `inputs.*`, `steps.*.outputs.*`, `steps.*.outcome`, `github.*`,
'strings', `==`, `!=`, `&&`, `||`, `!`, parentheses, `success()`, `failure()`, `always()`.
Steps that `uses:` another action are recorded, not run (setup-python: the tests' Python is
the one on PATH; upload-artifact: the files are checked by the tests).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ACTIONS = ROOT / ".github" / "actions"

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>&&|\|\||==|!=|!|\(|\))"
    r"|(?P<fn>(?:success|failure|always)\(\))|(?P<name>[A-Za-z_][A-Za-z0-9_.-]*))"
)
_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)


@dataclass
class StepResult:
    name: str
    outcome: str  # success, failure, skipped
    outputs: dict[str, str] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""


@dataclass
class ActionRun:
    steps: list[StepResult]
    outputs: dict[str, str]
    summary: str
    uses: list[dict[str, Any]]

    @property
    def failed(self) -> bool:
        return any(s.outcome == "failure" for s in self.steps)

    def step(self, name: str) -> StepResult:
        (found,) = [s for s in self.steps if s.name == name]
        return found

    @property
    def log(self) -> str:
        return "\n".join(s.stdout + s.stderr for s in self.steps)


class _Context:
    def __init__(self, inputs: dict[str, str], github: dict[str, str]) -> None:
        self.inputs = inputs
        self.github = github
        self.steps: dict[str, StepResult] = {}
        self.failed = False

    def lookup(self, name: str) -> str:
        head, _, rest = name.partition(".")
        if head == "inputs":
            return self.inputs[rest]
        if head == "github":
            return self.github.get(rest, "")
        if head == "steps":
            step_id, _, what = rest.partition(".")
            step = self.steps.get(step_id)
            if step is None:
                return ""
            if what == "outcome":
                return step.outcome
            kind, _, key = what.partition(".")
            assert kind == "outputs", name
            return step.outputs.get(key, "")
        raise AssertionError(f"unsupported context: {name}")

    def evaluate(self, expr: str) -> Any:
        """The value of one expression (without ${{ }}): a string or a boolean."""
        code: list[str] = []
        pos = 0
        values: list[Any] = []
        while pos < len(expr.rstrip()):
            m = _TOKEN.match(expr, pos)
            assert m and m.end() > pos, f"cannot parse {expr!r} at {pos}"
            pos = m.end()
            if m["str"] is not None:
                values.append(m["str"][1:-1].replace("''", "'"))
            elif m["fn"] is not None:
                fn = m["fn"][:-2]
                values.append({"success": not self.failed, "failure": self.failed,
                               "always": True}[fn])  # fmt: skip
            elif m["name"] is not None:
                values.append(self.lookup(m["name"]))
            else:
                op = m["op"]
                code.append({"&&": " and ", "||": " or ", "!": " not "}.get(op, op))
                continue
            code.append(f"_v[{len(values) - 1}]")
        return eval("".join(code), {"__builtins__": {}}, {"_v": values})

    def interpolate(self, text: str) -> str:
        return _EXPR.sub(lambda m: str(self.evaluate(m.group(1))), text)

    def condition(self, step: dict[str, Any]) -> bool:
        cond = str(step.get("if", "success()"))
        inner = _EXPR.fullmatch(cond.strip())
        cond = inner.group(1) if inner else cond
        if not re.search(r"\b(success|failure|always)\(\)", cond):
            cond = f"success() && ({cond})"
        return bool(self.evaluate(cond))


def run_action(
    name: str,
    *,
    workspace: Path,
    inputs: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    github: dict[str, str] | None = None,
    skip: tuple[str, ...] = ("Install bpsync",),
    timeout: float = 120,
) -> ActionRun:
    """Runs .github/actions/NAME in WORKSPACE; `skip` names steps not to run (installing
    bpsync: the tests run the bpsync of this checkout, on PATH)."""
    action_dir = ACTIONS / name
    doc = yaml.safe_load((action_dir / "action.yml").read_text(encoding="utf-8"))
    declared = doc.get("inputs", {})
    unknown = set(inputs or {}) - set(declared)
    assert not unknown, f"{name}: undeclared inputs {unknown}"
    ctx = _Context({}, {"sha": "0" * 40, "actor": "tester", "ref_name": "main", **(github or {})})
    for key, spec in declared.items():
        default = str(spec.get("default", ""))
        ctx.inputs[key] = (inputs or {}).get(key, ctx.interpolate(default))
    temp = workspace.parent / f"runner-temp-{name}"
    temp.mkdir(exist_ok=True)
    summary = temp / "summary.md"
    summary.touch()
    base_env = {
        **(env if env is not None else dict(os.environ)),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GITHUB_ACTION_PATH": str(action_dir),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_SHA": ctx.github["sha"],
        "GITHUB_ACTOR": ctx.github["actor"],
        "GITHUB_REF_NAME": ctx.github["ref_name"],
        "RUNNER_TEMP": str(temp),
        "NO_COLOR": "1",
    }
    results: list[StepResult] = []
    uses: list[dict[str, Any]] = []
    for i, step in enumerate(doc["runs"]["steps"]):
        label = step.get("name") or step.get("uses") or f"step {i}"
        result = StepResult(label, "skipped")
        if ctx.condition(step) and label not in skip:
            if "uses" in step:
                given = {k: ctx.interpolate(str(v)) for k, v in step.get("with", {}).items()}
                uses.append({"uses": step["uses"], "with": given})
                result.outcome = "success"
            else:
                result = _run_step(ctx, step, label, workspace, base_env, temp / f"out-{i}",
                                   timeout)  # fmt: skip
        results.append(result)
        if "id" in step:
            ctx.steps[step["id"]] = result
        if result.outcome == "failure":
            ctx.failed = True
    outputs = {k: ctx.interpolate(str(v["value"])) for k, v in doc.get("outputs", {}).items()}
    return ActionRun(results, outputs, summary.read_text(encoding="utf-8"), uses)


def _run_step(
    ctx: _Context,
    step: dict[str, Any],
    label: str,
    workspace: Path,
    base_env: dict[str, str],
    output_file: Path,
    timeout: float,
) -> StepResult:
    assert step.get("shell") == "bash", f"{label}: only shell: bash is supported"
    output_file.write_text("", encoding="utf-8")
    step_env = {k: ctx.interpolate(str(v)) for k, v in step.get("env", {}).items()}
    cwd = workspace / ctx.interpolate(str(step.get("working-directory", ".")))
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd, env={**base_env, **step_env, "GITHUB_OUTPUT": str(output_file)},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    outputs = dict(
        line.split("=", 1) for line in output_file.read_text(encoding="utf-8").splitlines()
    )
    outcome = "success" if proc.returncode == 0 else "failure"
    return StepResult(label, outcome, outputs, proc.stdout, proc.stderr)
