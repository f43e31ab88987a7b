"""`--help` documents every option and positional, and every command shows an example;
`bpsync completion bash|zsh|fish` is generated from the same parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli

from bpsync.cli.parser import build_parser


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(path, p) for path, p in walk(build_parser()) if path]


def test_every_option_and_positional_has_help() -> None:
    missing = [
        f"{' '.join(('bpsync', *path))} {'/'.join(a.option_strings) or a.dest}"
        for path, parser in walk(build_parser())
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction)
        and (a.help is None or a.help == argparse.SUPPRESS or not a.help.strip())
    ]
    assert missing == []


def test_every_command_has_an_example() -> None:
    missing = []
    for path, parser in commands():
        epilog = parser.epilog or ""
        leaves = [p for p in commands() if p[0][: len(path)] == path and p[0] != path]
        shown = " ".join(("bpsync", *path))
        if not leaves and (f"  {shown}" not in epilog or "example" not in epilog.lower()):
            missing.append(shown)
        if not isinstance(parser.formatter_class, type) or not issubclass(
            parser.formatter_class, argparse.RawDescriptionHelpFormatter
        ):
            missing.append(f"{shown} (formatter keeps the example's layout)")
    assert missing == []


def test_help_shows_the_example(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run_cli(["init", "--help"], tmp_path)
    assert code == 0
    out = capsys.readouterr().out
    assert "example:\n  bpsync init --from tables/owners.csv --key application\n" in out
    # one-line descriptions are still wrapped to the terminal
    assert max(len(line) for line in out.splitlines()) <= 100


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_is_generated_from_the_parser(shell: str, tmp_path: Path) -> None:
    code, out, err = run_cli(["completion", shell], tmp_path)
    assert code == 0, err
    for path, parser in commands():
        assert path[-1] in out, f"{path} missing from the {shell} completion"
        for a in parser._actions:
            for option in a.option_strings:
                if option.startswith("--") and option != "--help":
                    # fish names long options without their dashes: `-l table`
                    shown = f"-l {option[2:]}" if shell == "fish" else option
                    assert shown in out, f"{option} of {path} missing from {shell}"


def test_bash_completion_is_valid_bash(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    _, out, _ = run_cli(["completion", "bash"], tmp_path)
    done = subprocess.run(["bash", "-n"], input=out, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_fish_completion_is_valid_fish(tmp_path: Path) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    _, out, _ = run_cli(["completion", "fish"], tmp_path)
    done = subprocess.run(["fish", "--no-execute"], input=out, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_help_does_not_load_the_completion_generator() -> None:
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from bpsync.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    run(['plan', '--help'])\n"
        "print(sorted(m for m in ('shtab', 'httpx', 'yaml') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_zsh_completion_is_valid_zsh(tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    _, out, _ = run_cli(["completion", "zsh"], tmp_path)
    done = subprocess.run(["zsh", "-n"], input=out, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_fish_completes_commands_and_options(tmp_path: Path) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    _, out, _ = run_cli(["completion", "fish"], tmp_path)
    script = tmp_path / "bpsync.fish"
    script.write_text(out)
    probe = f"source {script}; complete -C 'bpsync ini'; complete -C 'bpsync init --'"
    done = subprocess.run(["fish", "--no-config", "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    offered = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert "init" in offered and {"--from", "--key", "--name"} <= set(offered)
