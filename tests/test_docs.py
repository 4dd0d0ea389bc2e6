"""The README documents every command, and its test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from elite_cli.commands import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEST_COMMAND = "python3 -m pytest -q"


def command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of a click group, as name tuples: ('models', 'import')."""
    paths = []
    for name, command in group.commands.items():
        paths.append(prefix + (name,))
        if hasattr(command, "commands"):
            paths.extend(command_paths(command, prefix + (name,)))
    return paths


ALL_COMMANDS = command_paths(typer.main.get_command(app))


def test_the_command_list_is_complete():
    # Guards the test below against silently checking nothing.
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {"add", "gen", "list", "show", "rm", "rename", "tag", "export", "import", "history"} <= names
    assert {"models", "models import", "models tiny", "config", "config set", "doctor", "check", "reencode"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path))
def test_every_command_is_in_the_readme(path):
    command = "elite " + " ".join(path)
    # As a heading item (`elite add ...`) or in an example line (elite add ...).
    assert re.search(rf"(`|^|\s){re.escape(command)}(\s|`|$)", README, re.MULTILINE), f"README lacks `{command}`"


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path))
def test_every_command_has_help_with_an_example(path, run_cli):
    result = run_cli(*path, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout, f"`elite {' '.join(path)} --help` shows no example"
    # Options show a value placeholder a user understands, never a Python type like <list[str]>.
    for line in result.stdout.splitlines():
        if line.lstrip().startswith("-"):
            assert not re.search(r"<[^>]*(\[|,)", line), f"`elite {' '.join(path)} --help`: {line.strip()}"


@pytest.mark.parametrize("path", [()] + ALL_COMMANDS,
                         ids=lambda path: " ".join(path) or "elite")
def test_text_options_show_what_they_take_not_str(path, run_cli):
    # `--device <str>` said nothing a user can act on; `--device <device>` points to the help text.
    for line in run_cli(*path, "--help").stdout.splitlines():
        if line.lstrip().startswith("-"):
            assert "<str>" not in line, f"`elite {' '.join(path)} --help`: {line.strip()}"


def test_every_global_option_is_in_the_readme():
    group = typer.main.get_command(app)
    for parameter in group.params:
        longest = max(parameter.opts, key=len)
        assert longest in README, f"README lacks the global option {longest}"


def test_readme_test_command_is_what_ci_runs_last():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci_lines if line and not line.startswith("#")]
    assert commands[-1] == TEST_COMMAND
    setup_block = re.search(r"## Install and test.*?```bash\n(.*?)```", README, re.DOTALL)
    assert setup_block is not None, "README lacks the two-command set-up block"
    assert setup_block.group(1).strip().splitlines() == [
        "pip install torch==2.13.0 && pip install -e '.[test,ui]'",
        TEST_COMMAND,
    ]


def test_changelog_has_an_unreleased_section():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog


REPORTING_COMMANDS = ["add", "gen", "list", "show", "history", "import", "check", "reencode", "models", "config", "doctor"]


@pytest.mark.parametrize("command", REPORTING_COMMANDS)
def test_commands_that_report_data_take_json(command, run_cli):
    assert "--json" in run_cli(command, "--help").stdout
