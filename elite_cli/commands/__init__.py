"""The `elite` command line: the top-level options, and every command module mounted on one app.

The command modules of this folder (concepts.py, generate.py, setup.py, ui.py, evaluate.py,
train.py) register their commands on the apps of common.py, which is all they
import from the CLI; this module imports them, so there is no import circle. Each command parses,
calls the API (elite_cli/api.py), prints. Names that other code imports from here (app, main,
options, model_spec, library_dir, ...) are re-exported from common.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elite_cli import __version__
from elite_cli.commands import common as cli_common
from elite_cli.common import config as settings_module
from elite_cli.commands.common import (  # noqa: F401  (re-exported: `from elite_cli.commands import app` etc.)
    HELP_OPTIONS,
    EliteTyper,
    GlobalOptions,
    JsonFlag,
    app,
    as_dict,
    check_file_exists,
    config_app,
    echo_json,
    effective_settings,
    fetch_missing_models,
    format_cell,
    library_dir,
    library_exists,
    load_models_with_status,
    loading_message,
    model_spec,
    models_app,
    new_app,
    open_session,
    open_store,
    print_rows,
    report_errors,
    setting,
    shorten_home,
    stderr_console,
    stdout_console,
)
from elite_cli.commands import concepts as _concepts  # noqa: E402,F401  (registers commands)
from elite_cli.commands import generate as _generate  # noqa: E402,F401
from elite_cli.commands import setup as _setup  # noqa: E402,F401
from elite_cli.commands import ui as _ui  # noqa: E402,F401
from elite_cli.commands.evaluate import eval_command  # noqa: E402
from elite_cli.commands.train import train_app  # noqa: E402  (typer + pure-Python recipe only)


# ---------------------------------------------------------------------------------------------
# Top level


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"elite {__version__}")
        raise typer.Exit()


def model_option(metavar: str, what: str, variable: str) -> Any:
    """A top-level option naming a model or device setting (flag, else environment, config.toml, default)."""
    return Annotated[Optional[str], typer.Option(metavar=metavar, help=f"{what} (env {variable}).")]


LibraryOption = Annotated[
    Optional[Path], typer.Option("--library", help="Concept library folder (env ELITE_HOME).", show_default=False)
]
DeviceOption = model_option("<device>", "auto, cpu, cuda, cuda:N or mps", "ELITE_DEVICE")
DtypeOption = model_option("<dtype>", "auto, float32, float16 or bfloat16", "ELITE_DTYPE")
BaseModelOption = model_option("<model>", "SD 1.x hub id or folder", "ELITE_BASE_MODEL")
ImageEncoderOption = model_option("<model>", "CLIP ViT-L/14 hub id or folder", "ELITE_IMAGE_ENCODER")
GlobalMapperOption = model_option("<file>", "Global mapper file", "ELITE_GLOBAL_MAPPER")
LocalMapperOption = model_option("<file>", "Local mapper file", "ELITE_LOCAL_MAPPER")
LowVramOption = Annotated[
    bool, typer.Option("--low-vram", help="Keep models in CPU memory, each on the GPU only while it runs.")
]
CompileOption = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet: slow first image, faster after.")]
VerboseOption = Annotated[bool, typer.Option("-v", "--verbose", help="Show tracebacks and library logs.")]
VersionOption = Annotated[
    bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
]


@app.callback()
def main_callback(
    library: LibraryOption = None, device: DeviceOption = None, dtype: DtypeOption = None,
    base_model: BaseModelOption = None, image_encoder: ImageEncoderOption = None,
    global_mapper: GlobalMapperOption = None, local_mapper: LocalMapperOption = None,
    low_vram: LowVramOption = False, compile_unet: CompileOption = False, verbose: VerboseOption = False,
    version: VersionOption = False,
) -> None:
    """Settings shared by every command; models come from flag, environment, config.toml, default."""
    # Set on cli_common's object, which the commands read (tests swap it for a fresh one).
    options = cli_common.options
    options.library = library.expanduser() if library is not None else None
    options.flags = {
        "device": device,
        "dtype": dtype,
        "base_model": base_model,
        "image_encoder": image_encoder,
        "global_mapper": global_mapper,
        "local_mapper": local_mapper,
    }
    for key in ("device", "dtype"):
        # Checked here so that every command refuses them, not only those that load models.
        value = options.flags[key]
        if value and not settings_module.is_valid_choice(settings_module.SETTINGS_BY_KEY[key], value):
            typer.echo(f"Error: --{key} '{value}' is not one of "
                       f"{settings_module.accepted_values(settings_module.SETTINGS_BY_KEY[key])}.", err=True)
            raise typer.Exit(1)
    options.verbose = verbose
    options.low_vram = low_vram
    options.compile_unet = compile_unet
    if not verbose:
        # The model libraries warn about things users cannot act on (unused weights etc.).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main() -> None:
    """Console-script entry point (`elite`, `python -m elite_cli`)."""
    app(prog_name="elite")


app.command("eval")(eval_command)
app.add_typer(train_app, name="train")
