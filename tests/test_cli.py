"""The command line's own behaviour: start-up weight, `-C DIR`, help texts, usage errors."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from bpsync.cli import build_parser
from bpsync.cli.parser import _COMMANDS, EXAMPLES, TOP_EXAMPLES, command_of, parse
from bpsync.errors import UsageError


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_importing_the_cli_loads_no_http_yaml_or_schema_code() -> None:
    loaded = _loaded_after("import bpsync.cli")
    assert not loaded & {"httpx", "yaml", "jsonschema", "bpsync.planner", "bpsync.github"}


def test_help_loads_no_http_code() -> None:
    loaded = _loaded_after(
        "import contextlib, io\nfrom bpsync.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    run(['--help'])"
    )
    assert "bpsync.cli.parser" in loaded
    assert "httpx" not in loaded and "bpsync.cli.core" not in loaded


def test_python_dash_m_bpsync_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bpsync", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("bpsync ")


def test_state_migrate_path_is_relative_to_dash_c(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "bpsync.yaml").write_text("state:\n  backend: local\n  bucket: b\n")
    code, _, err = run_cli(
        ["-C", "project", "state", "migrate", "--to", "s3", "--path", "old-state"], tmp_path
    )
    assert code == 1, err
    assert f"nothing to migrate: {project / 'old-state'} holds no state" in err


def _all_help(parser: argparse.ArgumentParser | None = None) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        out[name] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")

    walk(parser or build_parser(), "bpsync")
    return out


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["plan", "--no-refresh"], "plan"),
        (["-C", "plan", "--env", "prod", "--no-color", "--debug", "apply"], "apply"),
        (["-Cdir", "--env=prod", "state", "migrate"], "state"),
        (["--help", "plan"], None),  # the top-level help lists every command
        (["--version"], None),
        (["--en", "prod", "plan"], None),  # an abbreviation: argparse decides
        (["pla"], None),  # a typo: the error names the closest command
        (["-C"], None),
        ([], None),
    ],
)
def test_the_command_is_known_only_when_certain(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


def _examples() -> list[list[str]]:
    lines = [*EXAMPLES.values(), *TOP_EXAMPLES]
    lines += ["bpsync -C x --env prod --no-color plan --no-refresh --format json --table a"]
    lines += ["bpsync plan --bogus", "bpsync apply --auto-aprove", "bpsync ci", "bpsync state"]
    lines += ["bpsync ci coment", "bpsync state migrat --to s3", "bpsync plan --format yaml"]
    out = []
    for line in lines:
        words = shlex.split(line, comments=True)[1:]
        out.append(words[: words.index(">")] if ">" in words else words)
    return out


@pytest.mark.parametrize("argv", _examples(), ids=" ".join)
def test_a_command_alone_parses_as_in_the_whole_parser(argv: list[str]) -> None:
    def outcome(parser: argparse.ArgumentParser) -> object:
        try:
            return vars(parse(parser, argv))
        except UsageError as e:
            return e.render()

    command = command_of(argv)
    assert command is not None
    assert outcome(build_parser(command)) == outcome(build_parser())


def test_a_command_alone_has_the_help_of_the_whole_parser() -> None:
    whole = _all_help()
    for command in _COMMANDS:
        alone = _all_help(build_parser(command))
        del alone["bpsync"]  # the top-level help, which lists the commands, is not shown
        assert alone and alone.items() <= whole.items(), command


def test_help_points_to_no_document_users_do_not_have() -> None:
    offending = [name for name, text in _all_help().items() if "SPEC" in text or "§" in text]
    assert not offending


def test_ci_issue_help_speaks_of_the_issue() -> None:
    text = _all_help()["bpsync ci issue"]
    assert "comment" not in text
    assert "identifies the issue" in text


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["pln"], "did you mean plan?"),
        (["aply", "--auto-approve"], "did you mean apply?"),
        (["plan", "--max-rwos", "3"], "did you mean --max-rows?"),
        (["plan", "--tabel=owners"], "did you mean --table?"),
        (["ci", "coment"], "did you mean comment?"),
        (["state", "migrate", "--to", "s3", "--bukcet", "b"], "did you mean --bucket?"),
        (["--no-colour", "validate"], "did you mean --no-color?"),
    ],
)
def test_a_mistyped_command_or_option_names_the_closest(
    tmp_path: Path, argv: list[str], suggestion: str
) -> None:
    code, out, err = run_cli(argv, tmp_path)
    assert code == 64, err
    assert suggestion in err
    assert out == ""


def test_a_word_close_to_nothing_gets_no_suggestion(tmp_path: Path) -> None:
    code, _, err = run_cli(["plan", "--zzzzzz"], tmp_path)
    assert code == 64
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err


def test_shared_options_read_the_same_everywhere() -> None:
    helps = _all_help()
    for option, commands in {
        "--lock-timeout": ["plan", "apply", "import", "state migrate"],
        "--max-rows": ["plan", "apply", "show"],
        "--table": ["validate", "fmt", "plan", "apply"],
    }.items():
        lines = {
            " ".join(
                next(
                    line.strip()
                    for line in helps[f"bpsync {c}"].splitlines()
                    if line.strip().startswith(option)
                ).split()
            )
            for c in commands
        }
        assert len(lines) == 1, (option, lines)


def test_max_bytes_fits_the_markdown_and_links_the_run(tmp_path: Path) -> None:
    """The job summary's rendering (`--max-bytes`) fits its byte budget; the comment names
    the run whose summary and artifact hold more."""
    from helpers import owners_repo

    rows = "".join(
        f"app-{i:05d},owner-{i % 7},https://wiki.example.com/{'x' * 60}/{i}\n" for i in range(3_000)
    )
    repo = owners_repo(tmp_path, rows, header="application,owner,team\n")
    gh = {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/tables",
        "GITHUB_RUN_ID": "42",
    }
    code, out, err = run_cli(
        ["plan", "--format", "markdown", "--max-bytes", "4000", "--out", "p.out"], repo, gh
    )
    assert code == 0, err
    assert len(out.encode("utf-8")) <= 4000
    code, comment, err = run_cli(["show", "p.out", "--format", "markdown"], repo, gh)
    assert code == 0, err
    assert "https://github.com/acme/tables/actions/runs/42" in comment
    assert len(comment.encode("utf-8")) > 4000
    code, _, err = run_cli(["show", "p.out", "--format", "markdown", "--max-bytes", "10"], repo)
    assert code == 64 and "--max-bytes" in err
