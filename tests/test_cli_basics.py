"""CLI behaviour that needs no models: settings precedence, PNG outputs, error reporting, speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from elite_cli import __version__
from elite_cli.common import config as settings
from elite_cli.commands import EliteTyper
from elite_cli.errors import InputError, ModelError
from elite_cli.common.failures import OUT_OF_MEMORY, user_message
from elite_cli.common.outputs import (
    GenerationRecord,
    a1111_parameters,
    image_file_name,
    read_png_parameters,
    save_png,
    slugify,
)


# --- settings precedence -----------------------------------------------------------------------


def test_defaults_when_nothing_is_set(tmp_path: Path):
    resolved = settings.resolve(tmp_path, environ={})
    assert resolved["base_model"].value == "CompVis/stable-diffusion-v1-4"
    assert resolved["image_encoder"].value == "openai/clip-vit-large-patch14"
    # The ELITE authors' files on the Hub, until `elite models import` puts a pair in models/.
    assert resolved["global_mapper"].value == "hf://ELITE-library/ELITE/checkpoints/global_mapper.pt"
    assert resolved["local_mapper"].value == "hf://ELITE-library/ELITE/checkpoints/local_mapper.pt"
    assert {item.source for item in resolved.values()} == {"default"}


def test_flag_beats_environment_beats_config_file_beats_default(tmp_path: Path):
    (tmp_path / "config.toml").write_text('base_model = "from-file"\nimage_encoder = "enc-file"\ndevice = "cpu"\n')
    environ = {"ELITE_BASE_MODEL": "from-env", "ELITE_IMAGE_ENCODER": "enc-env"}
    resolved = settings.resolve(tmp_path, flags={"base_model": "from-flag"}, environ=environ)
    assert (resolved["base_model"].value, resolved["base_model"].source) == ("from-flag", "flag")
    assert (resolved["image_encoder"].value, resolved["image_encoder"].source) == ("enc-env", "env ELITE_IMAGE_ENCODER")
    assert resolved["device"].value == "cpu"
    assert resolved["device"].source == f"config {tmp_path / 'config.toml'}"
    assert resolved["dtype"].source == "default"


def test_relative_paths_in_config_file_are_relative_to_the_library(tmp_path: Path):
    (tmp_path / "config.toml").write_text('global_mapper = "mine/g.safetensors"\n')
    resolved = settings.resolve(tmp_path, environ={})
    assert resolved["global_mapper"].value == str(tmp_path / "mine" / "g.safetensors")


@pytest.mark.parametrize(
    "text, message",
    [
        ("base_model = ", "is not valid TOML"),
        ('colour = "red"\n', "unknown key 'colour'"),
        ("steps = 3\n", "unknown key 'steps'"),
        ("base_model = 3\n", "must be a string"),
        ('device = "gpu"\n', "device 'gpu'"),
    ],
)
def test_bad_config_file_is_an_input_error(tmp_path: Path, text: str, message: str):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(InputError, match=message):
        settings.resolve(tmp_path, environ={})


def test_config_set_round_trips_through_toml(tmp_path: Path):
    settings.set_config_value(tmp_path, "base_model", 'C:\\models\\sd "1.5" ü')
    settings.set_config_value(tmp_path, "device", "cpu")
    assert settings.read_config_file(tmp_path) == {"base_model": 'C:\\models\\sd "1.5" ü', "device": "cpu"}
    assert settings.unset_config_value(tmp_path, "device")[1] is True
    assert settings.read_config_file(tmp_path) == {"base_model": 'C:\\models\\sd "1.5" ü'}


def test_config_unset_of_a_key_that_is_not_set_says_so(run_cli, elite_home: Path):
    result = run_cli("config", "unset", "device")
    assert result.exit_code == 0, result.output
    assert "device is not set" in result.stdout and "Removed" not in result.stdout
    assert not (elite_home / "config.toml").exists()
    run_cli("config", "set", "device", "cpu")
    assert "Removed device" in run_cli("config", "unset", "device").stdout


def test_elite_config_shows_value_and_source(run_cli, elite_home: Path, monkeypatch):
    assert run_cli("config", "set", "dtype", "float16").exit_code == 0
    monkeypatch.setenv("ELITE_BASE_MODEL", "/models/sd")
    result = run_cli("--device", "cpu", "config", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["library"] == str(elite_home)
    assert shown["settings"]["device"] == {"value": "cpu", "source": "flag"}
    assert shown["settings"]["base_model"] == {"value": "/models/sd", "source": "env ELITE_BASE_MODEL"}
    assert shown["settings"]["dtype"] == {"value": "float16", "source": f"config {elite_home / 'config.toml'}"}
    table = run_cli("config")
    assert "env ELITE_BASE_MODEL" in table.stdout and "/models/sd" in table.stdout


def test_library_flag_beats_elite_home(run_cli, tmp_path: Path):
    result = run_cli("--library", tmp_path / "other", "config", "--json")
    assert json.loads(result.stdout)["library"] == str(tmp_path / "other")
    assert json.loads(result.stdout)["library_source"] == "flag"


def test_elite_config_names_the_library_source_it_used(run_cli, monkeypatch):
    # ELITE_HOME is set by the autouse fixture: the source is that variable, not "ELITE_HOME or default".
    assert json.loads(run_cli("config", "--json").stdout)["library_source"] == "env ELITE_HOME"
    library_row = next(line for line in run_cli("config").stdout.splitlines() if line.lstrip().startswith("library"))
    assert "env ELITE_HOME" in library_row and " or " not in library_row
    monkeypatch.delenv("ELITE_HOME")
    assert json.loads(run_cli("config", "--json").stdout)["library_source"] == "default"


# --- PNG outputs -------------------------------------------------------------------------------


def make_record(**changes) -> GenerationRecord:
    values = dict(
        prompt="<mycat> on the beach, sunset",
        negative_prompt="blurry",
        seed=42,
        steps=50,
        guidance_scale=5.0,
        llambda=0.8,
        width=512,
        height=512,
        scheduler="lms",
        base_model="CompVis/stable-diffusion-v1-4",
        image_encoder="openai/clip-vit-large-patch14",
        global_mapper="sha256:aa",
        local_mapper="sha256:bb",
        concepts={"mycat": "c1"},
        elite_version=__version__,
    )
    values.update(changes)
    return GenerationRecord(**values)


def test_slug_and_file_name():
    assert slugify("<mycat> on the beach!") == "mycat-on-the-beach"
    assert slugify("Café, crème") == "cafe-creme"
    assert slugify("!!!") == "image"
    assert len(slugify("word " * 40)) <= 48
    when = datetime(2026, 11, 25, 9, 5, 7)
    assert image_file_name("<mycat> on the beach", 7, when) == "20261125-090507-mycat-on-the-beach-7.png"
    assert image_file_name("<mycat> on the beach", 7, when, 2) == "20261125-090507-mycat-on-the-beach-7-2.png"


def test_a1111_parameters_line():
    text = a1111_parameters(make_record())
    lines = text.split("\n")
    assert lines[0] == "<mycat> on the beach, sunset"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 50, Sampler: LMS, CFG scale: 5, Seed: 42, Size: 512x512, ")
    assert "ELITE lambda: 0.8" in lines[2] and "ELITE concepts: mycat" in lines[2]
    assert "Negative prompt" not in a1111_parameters(make_record(negative_prompt=""))


def test_save_png_never_overwrites_and_carries_parameters(tmp_path: Path):
    from PIL import Image

    when = datetime(2026, 1, 2, 3, 4, 5)
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    first = save_png(image, tmp_path / "out", make_record(), when)
    second = save_png(image, tmp_path / "out", make_record(), when)
    assert first.name == "20260102-030405-mycat-on-the-beach-sunset-42.png"
    assert second.name == "20260102-030405-mycat-on-the-beach-sunset-42-1.png"
    assert {path.name for path in (tmp_path / "out").iterdir()} == {first.name, second.name}
    parameters = read_png_parameters(first)
    assert parameters["seed"] == 42 and parameters["prompt"] == "<mycat> on the beach, sunset"
    assert parameters["global_mapper"] == "sha256:aa" and parameters["concepts"] == {"mycat": "c1"}
    with Image.open(first) as reopened:
        assert reopened.info["parameters"].startswith("<mycat> on the beach, sunset\nNegative prompt: blurry\n")
        assert reopened.size == (16, 16)


def test_non_latin_prompt_is_stored_intact(tmp_path: Path):
    from PIL import Image

    record = make_record(prompt="<mycat> 在海滩上")
    path = save_png(Image.new("RGB", (8, 8)), tmp_path, record, datetime.now())
    assert read_png_parameters(path)["prompt"] == "<mycat> 在海滩上"


class ImageThatIsInterrupted:
    """Stands in for a PIL image whose encoding is cut short by Ctrl-C half-way through."""

    def save(self, stream, format, pnginfo):
        stream.write(b"\x89PNG partial")
        raise KeyboardInterrupt


def test_interrupted_save_leaves_no_file(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        save_png(ImageThatIsInterrupted(), tmp_path, make_record(), datetime.now())
    assert list(tmp_path.iterdir()) == []


# --- error reporting ---------------------------------------------------------------------------


class OutOfMemoryError(RuntimeError):
    """Same class name as torch.cuda.OutOfMemoryError, which is recognised without importing torch."""


@pytest.mark.parametrize(
    "error, expected",
    [
        (InputError("bad image 'x.png'; use PNG."), "bad image 'x.png'; use PNG."),
        (ModelError("no mapper"), "no mapper"),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), OUT_OF_MEMORY),
        (FileNotFoundError(2, "No such file", "/nope.png"), "'/nope.png' does not exist; check the path."),
        (IsADirectoryError(21, "Is a directory", "/tmp"), "'/tmp' is a folder; pass a file."),
        (PermissionError(13, "Permission denied", "/root/x"), "permission denied for '/root/x'"),
        (OSError(28, "No space left on device"), "the disk is full"),
        (ValueError("a bug"), None),
    ],
)
def test_user_message(error: BaseException, expected: str | None):
    message = user_message(error)
    if expected is None:
        assert message is None
    else:
        assert message is not None and message.startswith(expected)


def test_decompression_bomb_is_a_user_error():
    from PIL import Image

    assert "too large" in user_message(Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit"))


def app_that_raises(error: BaseException) -> EliteTyper:
    """An app with one command that raises `error`, registered the way every elite command is."""
    demo = EliteTyper()

    @demo.command()
    def boom() -> None:
        raise error

    @demo.command()
    def other() -> None:  # a second command keeps Typer from collapsing the app into one command
        pass

    return demo


@pytest.mark.parametrize(
    "error, exit_code, stderr",
    [
        (InputError("--width must be a multiple of 8."), 1, "Error: --width must be a multiple of 8.\n"),
        (KeyboardInterrupt(), 130, "Interrupted\n"),
        (KeyboardInterrupt("to go on, run it with --resume"), 130, "Interrupted; to go on, run it with --resume.\n"),
        (RuntimeError("kaput"), 1, "Error: unexpected RuntimeError: kaput; rerun with -v for the traceback and report it.\n"),
    ],
)
def test_errors_become_one_line(error, exit_code, stderr):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app_that_raises(error), ["boom"])
    assert result.exit_code == exit_code
    assert result.stderr == stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["gen", "<mycat> x", "--width", "500"], "Error: --width must be a positive multiple of 8 (e.g. 512), not 500."),
        (["gen", "<mycat> x", "--height", "0"], "Error: --height must be a positive multiple of 8 (e.g. 512), not 0."),
        (["gen", "<mycat> x", "--steps", "0"], "Error: --steps must be at least 1, not 0."),
        (["gen", "<mycat> x", "-n", "0"], "Error: -n must be at least 1, not 0."),
        (["gen", "<mycat> x", "--seed", "-1"], "Error: --seed must be between 0 and 4294967295, not -1."),
        (["gen", "<mycat> x", "--width", "4096"], "Error: --width must be at most 2048 (a multiple of 8;"),
        (["gen", "<mycat> x", "--height", "2056"], "Error: --height must be at most 2048 (a multiple of 8;"),
        (["gen", "<mycat> x", "--lambda", "nan"], "Error: --lambda must be a number from 0 to 2 (default 0.8;"),
        (["gen", "<mycat> x", "--lambda", "7"], "Error: --lambda must be a number from 0 to 2 (default 0.8; higher keeps more detail), not 7."),
        (["gen", "<mycat> x", "--lambda", "-0.5"], "Error: --lambda must be a number from 0 to 2"),
        (["gen", "<mycat> x", "--scheduler", "bogus"], "Error: --scheduler 'bogus' is not supported; use one of lms, ddim, pndm, euler, dpm++."),
        (["gen", "<mycat on the beach"], "Error: the prompt '<mycat on the beach' has a '<' without a closing '>'; name concepts as <name>"),
        (["gen", "<my cat> on the beach"], "Error: the prompt '<my cat> on the beach' has '<my cat>', which is not a concept placeholder; name concepts as <name>"),
        (["gen", "mycat> on the beach"], "Error: the prompt 'mycat> on the beach' has a '>' without an opening '<';"),
        (["gen"], "Error: give exactly one of PROMPT, --prompts FILE or --again ID."),
        (["gen", "a", "--prompts", "p.txt"], "Error: give exactly one of PROMPT, --prompts FILE or --again ID."),
        (["gen", "   "], 'Error: the prompt is empty; pass text such as "<mycat> on the beach".'),
        (["gen", "--prompts", "missing.txt"], "Error: prompts file 'missing.txt' does not exist; check the path."),
        (["add", "missing.jpg"], "Error: image 'missing.jpg' does not exist; check the path."),
        (["add", "a.jpg", "b.jpg", "--name", "x"], "Error: --name and --mask apply to one image;"),
        (["export", "x", "-o", "x.bin", "--format", "zip"], "Error: --format 'zip' is not one of elite, diffusers, a1111."),
        (["--device", "gpu", "config"], "Error: --device 'gpu' is not one of auto, cpu, cuda, mps or cuda:N."),
        (["config", "set", "colour", "red"], "Error: unknown setting 'colour'; known settings are"),
        (["models", "import", "g.pt", "l.pt"], "Error: global mapper checkpoint 'g.pt' does not exist; check the path."),
    ],
)
def test_user_errors_print_one_line(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "elite-out").exists()


def test_verbose_shows_the_traceback(run_cli):
    result = run_cli("-v", "gen", "<mycat> x", "--width", "500")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("Error: --width must be a positive multiple of 8 (e.g. 512), not 500.")


def test_empty_prompts_file(run_cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# only a comment\n\n")
    result = run_cli("gen", "--prompts", prompts)
    assert result.exit_code == 1
    assert result.stderr == f"Error: prompts file '{prompts}' holds no prompts; write one prompt per line.\n"


def test_unknown_concept_in_a_prompts_file_names_its_prompt(run_cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a plain photo\n<nocat> on the beach\n")
    result = run_cli("gen", "--prompts", prompts)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: the prompt '<nocat> on the beach': no concept named 'nocat'")
    assert result.stderr.count("\n") == 1


# --- top level ---------------------------------------------------------------------------------


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout == f"elite {__version__}\n"


def test_short_help_flag(run_cli):
    result = run_cli("-h")
    assert result.exit_code == 0
    for command in ("add", "gen", "list", "show", "rm", "rename", "tag", "export", "import", "models", "doctor", "check", "reencode", "history", "config"):
        assert f" {command} " in result.stdout


def test_help_does_not_import_torch_and_is_fast():
    # CPU time, not wall time: on a machine shared with other jobs wall time says little.
    code = (
        "import sys, time\n"
        "start = time.process_time()\n"
        "sys.argv = ['elite', '--help']\n"
        "from elite_cli.commands import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('\\nTORCH', 'torch' in sys.modules, 'SECONDS', time.process_time() - start)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["TORCH", "False"]
    assert float(last[3]) < 1.0


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "elite_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == f"elite {__version__}\n"


@pytest.mark.parametrize("args", [("show", "x"), ("rm", "x"), ("rename", "x", "y"), ("tag", "x", "t"),
                                  ("export", "x", "-o", "x.safetensors"), ("check",), ("reencode",)])
def test_commands_that_read_do_not_create_a_missing_library(run_cli, tmp_path: Path, args):
    # A mistyped --library (or ELITE_HOME) used to leave a new empty library wherever it pointed.
    missing = tmp_path / "typo" / "cats"
    result = run_cli("--library", missing, *args)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: there is no concept library in '{missing}' yet (`elite add` makes one); "
                             "check --library or ELITE_HOME.\n")
    assert not (tmp_path / "typo").exists()


def test_list_and_history_of_a_missing_library_are_empty_and_create_nothing(run_cli, tmp_path: Path):
    missing = tmp_path / "typo" / "cats"
    assert run_cli("--library", missing, "list").stdout.startswith("No concepts yet")
    assert json.loads(run_cli("--library", missing, "list", "--json").stdout) == []
    assert run_cli("--library", missing, "history").stdout.startswith("No runs yet")
    assert json.loads(run_cli("--library", missing, "history", "--json").stdout) == []
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("args", [("list",), ("config", "set", "device", "cpu"), ("doctor",), ("config",)])
def test_a_file_as_the_library_is_named_as_such(run_cli, tmp_path: Path, args):
    # It used to be "cannot create the library folder ... set ELITE_HOME" or "'<file>/config.toml' is not a folder".
    picture = tmp_path / "mycat.jpg"
    picture.write_bytes(b"jpeg")
    result = run_cli("--library", picture, *args)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: the library '{picture}' is a file, not a folder; point --library at a folder "
                             "(it is created on first `elite add`).\n")


def test_a_refused_import_creates_no_library(run_cli, tmp_path: Path):
    picture = tmp_path / "mycat.jpg"
    picture.write_bytes(b"\xff\xd8\xff\xe0 not a bundle")
    missing = tmp_path / "new-library"
    result = run_cli("--library", missing, "import", picture)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: '{picture}' is not a safetensors file")
    assert not missing.exists()


def test_a_closed_pipe_stops_quietly(tmp_path: Path):
    # `elite config | head -1`: the reader leaves early; this used to print "unexpected BrokenPipeError".
    environment = {**os.environ, "ELITE_HOME": str(tmp_path / "home")}
    process = subprocess.Popen([sys.executable, "-m", "elite_cli", "config", "unset", "device"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environment, cwd=Path(__file__).resolve().parents[1])
    process.stdout.close()  # before it writes anything
    stderr = process.stderr.read().decode()
    assert process.wait() == 1 and stderr == ""  # click's own handling of a broken pipe


def test_bare_elite_shows_the_commands(run_cli):
    # It used to answer only "Error: Missing command."
    result = run_cli()
    assert result.exit_code == 2
    assert "Commands:" in result.output and "Missing command" not in result.output


# --- words users see ---------------------------------------------------------------------------

def test_speed_below_one_image_a_second_is_seconds_per_image():
    from elite_cli.common.wording import speed

    assert speed(5, 2.0) == "2.50 images/s"
    assert speed(1, 3.24) == "3.2 s per image"  # not "0.31 images/s"
    assert speed(3, 300.0) == "100.0 s per image"


def test_loading_spinner_mentions_downloads_only_for_hub_models(tmp_path):
    from elite_cli.commands import loading_message

    (tmp_path / "sd").mkdir()
    (tmp_path / "mapper.safetensors").write_bytes(b"x")
    assert loading_message(tmp_path / "sd", tmp_path / "mapper.safetensors") == "Loading models..."
    assert "downloads" in loading_message(tmp_path / "sd", "CompVis/stable-diffusion-v1-4")


def test_tables_break_long_paths_between_words_at_80_columns(run_cli, tmp_path, monkeypatch):
    folder = tmp_path / "a-folder-with-many-models" / "stable-diffusion-v1-4-original"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    monkeypatch.setenv("ELITE_BASE_MODEL", str(folder))
    monkeypatch.setenv("HOME", str(tmp_path))
    for command in ("models", "doctor"):
        result = run_cli(command, env={"COLUMNS": "80"})
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, result.stdout
        # The path under the home folder is shown as ~/...; too long for its column, it breaks
        # after a `/`, never inside a name.
        for part in ("~/", "a-folder-with-many-models/", "stable-diffusion-v1-4-original"):
            assert any(part in line for line in lines), result.stdout
        assert str(tmp_path) not in result.stdout
