"""The documentation: the README is a short front door whose commands are the ones CI runs and
whose quick start works; the mkdocs site builds with --strict (a broken link or a page left out
of the navigation fails it); its command reference, generated from the Typer app, covers every
command and option; and the ```console examples of its pages run with the tiny models."""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import typer

from elite_cli.commands import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEST_COMMAND = "python3 -m pytest -q"
README_MAX_LINES = 150
# What the console-example runner adds to `elite gen` lines that set no size: the tiny models
# draw 512 px in 50 steps far too slowly for a test (docs/contributing.md says so).
TINY_GEN_FLAGS = ["--steps", "2", "--width", "64", "--height", "64"]


def command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of a click group, as name tuples: ('models', 'import')."""
    paths = []
    for name, command in group.commands.items():
        paths.append(prefix + (name,))
        if hasattr(command, "commands"):
            paths.extend(command_paths(command, prefix + (name,)))
    return paths


ROOT_COMMAND = typer.main.get_command(app)
ALL_COMMANDS = command_paths(ROOT_COMMAND)


def command_at(path: tuple[str, ...]):
    command = ROOT_COMMAND
    for name in path:
        command = command.commands[name]
    return command


def test_the_command_list_is_complete():
    # Guards the tests below against silently checking nothing.
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {"add", "gen", "list", "show", "rm", "rename", "tag", "export", "import", "history"} <= names
    assert {"models", "models import", "models tiny", "config", "config set", "doctor", "check", "reencode"} <= names


# ---------------------------------------------------------------------------------------------
# --help


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


REPORTING_COMMANDS = ["add", "gen", "list", "show", "history", "import", "check", "reencode", "models", "config", "doctor"]


@pytest.mark.parametrize("command", REPORTING_COMMANDS)
def test_commands_that_report_data_take_json(command, run_cli):
    assert "--json" in run_cli(command, "--help").stdout


# ---------------------------------------------------------------------------------------------
# README


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match is not None, f"lacks the section '## {heading}'"
    return match.group(1)


def ci_commands() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_is_a_short_front_door_with_nothing_dated():
    assert len(README.splitlines()) <= README_MAX_LINES
    for heading in ("Install and test", "Quick start", "Python API", "Documentation"):
        section(README, heading)
    # Dated figures and test timings belong to CHANGELOG.md and benchmarks/README.md.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README)
    assert not re.search(r"\d+ ?(min|minutes|s|seconds) (for|with) \d+ tests", README)


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md", "docs/contributing.md"])
def test_install_and_test_commands_are_what_ci_runs(page):
    commands = ci_commands()
    assert commands[-1] == TEST_COMMAND
    # .ci/run's pip lines, as a user types them: `python3 -m pip install --quiet X` -> `pip install X`.
    installs = [re.sub(r"^python3 -m pip install (--quiet )?", "pip install ", line)
                for line in commands if line.startswith("python3 -m pip install")]
    assert len(installs) == 2 and "docs" in installs[1], ".ci/run must install the docs extra"
    text = (ROOT / page).read_text(encoding="utf-8")
    expected = [" && ".join(installs), TEST_COMMAND]
    assert any(block.strip().splitlines() == expected for block in fenced_blocks(text, "bash")), (
        f"{page} lacks the block:\n" + "\n".join(expected))


def test_readme_links_point_at_files_that_exist():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to missing {target}"


def test_readme_python_api_is_the_docs_example():
    # tests/test_api.py runs the README's; the docs page must show the same code.
    readme_code = fenced_blocks(section(README, "Python API"), "python")
    docs_code = fenced_blocks((ROOT / "docs" / "api.md").read_text(encoding="utf-8"), "python")
    assert readme_code and readme_code[0] == docs_code[0]
    assert len(readme_code[0].strip().splitlines()) <= 10


def test_changelog_has_an_unreleased_section():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog


# ---------------------------------------------------------------------------------------------
# The site


def mkdocs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module with `mkdocs build --strict` (offline)."""
    folder = tmp_path_factory.mktemp("site")
    built = mkdocs("build", "--strict", "--site-dir", str(folder))
    assert built.returncode == 0, built.stderr[-4000:]
    return folder


def page_text(site: Path, name: str) -> str:
    return html.unescape((site / name / "index.html").read_text(encoding="utf-8"))


def test_the_site_builds_strict_with_every_page(site):
    pages = {path.stem for path in (ROOT / "docs").glob("*.md")} | {"reference", "library-format", "benchmarks", "changelog"}
    for page in pages - {"index"}:
        assert (site / page / "index.html").is_file(), f"docs page {page} was not built"
    assert "0.8" in page_text(site, "reference")  # a default (--lambda) made it into the page


def test_strict_fails_on_a_broken_link_or_a_page_left_out_of_the_nav(tmp_path):
    import yaml

    # mkdocs.yml's own validation settings, on a two-page site with both faults.
    validation = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["validation"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n")
    config = {"site_name": "t", "nav": [{"Home": "index.md"}], "validation": validation}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    built = mkdocs("build", "--strict", cwd=tmp_path)
    assert built.returncode != 0
    assert "missing.md" in built.stderr and "orphan.md" in built.stderr


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path))
def test_the_generated_reference_documents_every_command_and_option(site, path):
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    anchor = "elite-" + "-".join(path)
    assert f'id="{anchor}"' in reference, f"the command reference has no section for `elite {' '.join(path)}`"
    text = html.unescape(re.split(r'id="elite-', reference.split(f'id="{anchor}"', 1)[1])[0])
    for parameter in command_at(path).params:
        if not getattr(parameter, "hidden", False):
            shown = max(parameter.opts, key=len) if parameter.param_type_name == "option" else parameter.name
            assert shown in text, f"the reference of `elite {' '.join(path)}` lacks {shown}"


def test_the_reference_has_the_global_options_and_their_environment(site):
    reference = page_text(site, "reference")
    for parameter in ROOT_COMMAND.params:
        assert max(parameter.opts, key=len) in reference
    from elite_cli.common.config import SETTINGS

    for variable in ["ELITE_HOME", "ELITE_UI_AUTH"] + [setting.env for setting in SETTINGS]:
        assert variable in reference


def test_troubleshooting_lists_the_error_messages_of_the_code(site):
    page = page_text(site, "troubleshooting")
    # A few messages from different layers, as the source words them.
    for message in ("no object found: pass --mask FILE, --object TEXT or --mask none",
                    "the GPU ran out of memory; use a smaller --width/--height",
                    "give exactly one of PROMPT, --prompts FILE or --again ID."):
        assert message in page
    count = int(re.search(r"(\d+) messages, read from the source", page).group(1))
    assert count >= 150


def test_included_repository_files_are_pages(site):
    assert "elite concept library format" in page_text(site, "library-format")
    assert "elite benchmarks" in page_text(site, "benchmarks")
    assert "Unreleased" in page_text(site, "changelog")
    api = page_text(site, "api")
    assert "add_concepts" in api and "ConceptNotFound" in api  # mkdocstrings rendered the docstrings


# ---------------------------------------------------------------------------------------------
# Examples that run


def console_commands(text: str) -> list[list[str]]:
    """The `$ elite ...` lines of every ```console block, in order, as argument lists."""
    commands = []
    for block in fenced_blocks(text, "console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                words = shlex.split(line[2:], comments=True)
                assert words[0] == "elite", f"a console block runs only elite commands: {line}"
                commands.append(words[1:])
    return commands


def with_tiny_sizes(arguments: list[str]) -> list[str]:
    if arguments[:1] == ["gen"] and "--again" not in arguments and not {"--steps", "--width", "--height"} & set(arguments):
        return arguments + TINY_GEN_FLAGS
    return arguments


@pytest.fixture
def checkout_folder(tmp_path, monkeypatch) -> Path:
    """A working folder like a checkout's root, as far as the examples read it."""
    folder = tmp_path / "checkout"
    shutil.copytree(ROOT / "library" / "samples", folder / "library" / "samples")
    monkeypatch.chdir(folder)
    return folder


PAGES_WITH_EXAMPLES = sorted(path.name for path in (ROOT / "docs").glob("*.md")
                             if console_commands(path.read_text(encoding="utf-8")))


def test_the_docs_have_examples_that_run():
    assert {"getting-started.md", "library.md", "generating.md", "models.md"} <= set(PAGES_WITH_EXAMPLES)


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES)
def test_the_console_examples_of_a_page_run_in_order(page, use_tiny_models, checkout_folder, run_cli):
    commands = console_commands((ROOT / "docs" / page).read_text(encoding="utf-8"))
    for arguments in commands:
        assert arguments[:1] != ["ui"], f"{page}: `elite ui` does not return; show it in a bash block"
        result = run_cli(*with_tiny_sizes(arguments))
        assert result.exit_code == 0, f"{page}: `elite {shlex.join(arguments)}` failed:\n{result.output}"


def test_the_readme_quick_start_works_as_written_with_the_tiny_models(use_tiny_models, checkout_folder, run_cli):
    """A clean library with the tiny models, then the quick start line by line (with the sizes the
    README says to add to `elite gen`); `elite ui` starts, serves its page and stops on Ctrl+C.
    The tiny models come from the test session's set through the environment, as a user would
    point elite at them; the README's own tiny-models line is getting-started.md's, which
    test_the_console_examples_of_a_page_run_in_order runs."""
    blocks = fenced_blocks(section(README, "Quick start"), "console")
    quick_start = console_commands(f"```console\n{blocks[0]}```\n")
    tiny_line = console_commands(f"```console\n{blocks[1]}```\n")
    assert [arguments[0] for arguments in quick_start] == ["add", "gen", "list", "export", "ui"]
    assert tiny_line[0] in console_commands((ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8"))
    assert " ".join(TINY_GEN_FLAGS) in section(README, "Quick start")
    for arguments in quick_start[:-1]:
        result = run_cli(*with_tiny_sizes(arguments))
        assert result.exit_code == 0, f"`elite {shlex.join(arguments)}` failed:\n{result.output}"
    assert len(list((checkout_folder / "elite-out").glob("*.png"))) == 4
    assert (checkout_folder / "chelsea.elite.safetensors").is_file()
    assert quick_start[-1] == ["ui"]
    page = serve_and_stop_ui(checkout_folder)
    assert "elite" in page


def serve_and_stop_ui(folder: Path) -> str:
    """`elite ui --port 0` (any free port, not the README's 7860, which may be taken) in a
    subprocess: the page it serves, after which Ctrl+C (SIGINT) must stop it cleanly."""
    pytest.importorskip("gradio")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_TEMP_DIR=str(folder / "gradio-tmp"))
    # Ctrl+C as a terminal delivers it: a shell that ran pytest in the background may have left
    # SIGINT ignored, which the server would inherit.
    process = subprocess.Popen([sys.executable, "-m", "elite_cli", "ui", "--port", "0"], cwd=folder, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True).start()
    url = None
    try:
        for line in process.stdout:
            match = re.search(r"elite ui: (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
                break
        assert url, "elite ui did not print its address:\n" + "".join(errors)[-3000:]
        threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
        with urllib.request.urlopen(url, timeout=60) as response:
            page = response.read().decode("utf-8", "replace")
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, "".join(errors)[-3000:]
        return page
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_readme_mode_examples_are_run_in_the_modes_page():
    """The README's three mode lines are docs/modes.md's (run by the console-example test there)
    without the tiny sizes that page adds, so they cannot drift into something that fails."""
    readme_lines = console_commands(f"```console\n{fenced_blocks(section(README, 'From your own picture'), 'console')[0]}```\n")
    page_lines = console_commands((ROOT / "docs" / "modes.md").read_text(encoding="utf-8"))

    def without_sizes(arguments: list[str]) -> list[str]:
        kept, skip = [], False
        for word in arguments:
            if skip:
                skip = False
            elif word in ("--width", "--height", "--steps"):
                skip = True
            else:
                kept.append(word)
        return kept

    assert [next(word for word in arguments if word in ("--init-image", "--inpaint", "--control"))
            for arguments in readme_lines] == ["--init-image", "--inpaint", "--control"]
    for arguments in readme_lines:
        assert arguments in [without_sizes(line) for line in page_lines], f"docs/modes.md lacks `elite {shlex.join(arguments)}`"
