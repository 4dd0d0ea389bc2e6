"""What every `elite` command module shares: the apps commands register on, the global options,
error reporting, printing helpers and the `Session` (elite_cli/api.py) built from the options.

Command modules (concepts.py, generate.py, setup.py, ui.py, train.py, evaluate.py) import this
module, never the package's __init__.py, which imports them and adds the top-level options. Every command is registered through
`EliteTyper.command`, which wraps it in `report_errors`: the one place where exceptions become
`Error: ...` lines and exit codes. torch, diffusers and the model modules are imported inside the
commands that need them, so `elite --help` and `elite list` stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from elite_cli.common import config as settings_module
from elite_cli.errors import InputError
from elite_cli.common.failures import EXIT_ERROR, EXIT_INTERRUPTED, internal_message, user_message
from elite_cli.common.paths import check_file_exists  # noqa: F401  (for the command modules)
from elite_cli.model.generation_limits import LAMBDA_RANGE, MAX_IMAGE_SIDE

if TYPE_CHECKING:
    from elite_cli.api import Session
    from elite_cli.model.spec import ModelSpec


@dataclass
class GlobalOptions:
    """What the top-level options chose; set by `main_callback` before any command runs."""

    library: Path | None = None
    flags: dict[str, str | None] = field(default_factory=dict)
    verbose: bool = False
    low_vram: bool = False
    compile_unet: bool = False


options = GlobalOptions()


def report_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; print `Error: ...` (exit 1) or `Interrupted` (exit 130) instead of a traceback.

    With -v the traceback is printed too. Typer's own exits (typer.Exit, usage errors) pass through.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as error:  # a command may add how to carry on (`gen`: --resume)
            if options.verbose:
                traceback.print_exc(file=sys.stderr)
            hint = str(error) if isinstance(error, KeyboardInterrupt) else ""
            typer.echo(f"Interrupted; {hint}." if hint else "Interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:
            raise  # the reader went away (`elite show x | head -1`): click stops quietly (exit 1)
        except Exception as error:
            if type(error).__module__.startswith(("typer", "click")):
                raise  # usage errors: Typer formats those itself
            if options.verbose:
                traceback.print_exc(file=sys.stderr)
            message = user_message(error) or internal_message(error)
            typer.echo(f"Error: {message}", err=True)
            raise typer.Exit(EXIT_ERROR) from None

    return run


class EliteTyper(typer.Typer):
    """A Typer whose commands all go through `report_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._reporting_errors(super().command(*args, **kwargs))

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._reporting_errors(super().callback(*args, **kwargs))

    @staticmethod
    def _reporting_errors(register: Callable[[Callable[..., Any]], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Typer's decorator `register`, given the function wrapped in `report_errors`; the
        function itself is returned unwrapped, so tests and other code can call it directly."""

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            register(report_errors(function))
            return function

        return decorator


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def new_app(help_text: str | None = None, **kwargs: Any) -> EliteTyper:
    """An app with elite's conventions; without help_text, its callback's docstring is the help."""
    if help_text is not None:
        kwargs["help"] = help_text  # passing help=None would hide the callback's docstring
    kwargs.setdefault("no_args_is_help", False)  # `elite models`/`elite config` alone show their status
    return EliteTyper(
        context_settings=HELP_OPTIONS,
        add_completion=False,
        # Plain help: typer's rich help formatter costs ~0.15 s per `elite --help`.
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        **kwargs,
    )


app = new_app(
    "elite: put the thing in your picture into new images (ELITE over Stable Diffusion 1.x).\n\n"
    "Example: elite add mycat.jpg then elite gen \"<mycat> on the beach\"",
    no_args_is_help=True,  # a bare `elite` shows the commands rather than "Missing command"
)
models_app = new_app(invoke_without_command=True)
config_app = new_app(invoke_without_command=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# The image settings `elite gen` and `elite eval` both take (each command sets its own defaults).
NumberOption = Annotated[int, typer.Option("-n", "--number", help="Images per prompt.")]
StepsOption = Annotated[int, typer.Option(help="Denoising steps.")]
GuidanceOption = Annotated[float, typer.Option(help="Classifier-free guidance scale.")]
LambdaOption = Annotated[float, typer.Option(
    "--lambda", help=f"Local detail strength, {LAMBDA_RANGE[0]:g} to {LAMBDA_RANGE[1]:g}: higher = more faithful, less editable.")]
NegativeOption = Annotated[str, typer.Option("--negative", metavar="<text>", help="Negative prompt.")]
WidthOption = Annotated[int, typer.Option(help=f"Image width, a multiple of 8 up to {MAX_IMAGE_SIDE}.")]
HeightOption = Annotated[int, typer.Option(help=f"Image height, a multiple of 8 up to {MAX_IMAGE_SIDE}.")]
SchedulerOption = Annotated[str, typer.Option(
    metavar="<name>", help="Sampler: lms (as in the ELITE paper), ddim, pndm, euler or dpm++.")]


# ---------------------------------------------------------------------------------------------
# Shared helpers


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def stdout_console():
    from rich.console import Console

    return Console(highlight=False)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_rows(columns: list[str], rows: list[list[Any]], cut_column: str | None = None) -> None:
    """A plain table on stdout. Cells are text, never rich markup: prompts and paths may hold '['.

    With `cut_column`, every row is one line: that column's cells are cut with '…' to what the
    terminal leaves them, and the other columns (ids, times, counts) are shown whole.
    """
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    cells = [[cell if isinstance(cell, Text) else Text(shorten_home(format_cell(cell))) for cell in row] for row in rows]
    widths = [max([len(column), *(row[number].cell_len for row in cells)]) for number, column in enumerate(columns)]
    table = Table(show_edge=False, header_style="bold")
    layout = column_widths(cells, columns, widths, console.width) if cut_column is None else None
    if layout:
        cells = [[break_long_words(cell, width) for cell, width in zip(row, layout)] for row in cells]
    for number, column in enumerate(columns):
        if cut_column is None:
            table.add_column(column, overflow="fold", width=layout[number] if layout else None)
        else:
            table.add_column(column, no_wrap=True, min_width=widths[number] if column != cut_column else None)
    if cut_column is not None:
        cut = columns.index(cut_column)
        # Each column has one space of padding either side and one rule between columns.
        room = console.width - sum(width + 2 for number, width in enumerate(widths) if number != cut) - len(columns) - 1
        room = max(room, len(cut_column), 12)
        for row in cells:
            if row[cut].cell_len > room:
                row[cut] = row[cut][: room - 1] + Text("…")
    for row in cells:
        table.add_row(*row)
    console.print(table)


SHORT_COLUMN = 24


def column_widths(cells: list[list[Any]], columns: list[str], widths: list[int], terminal: int) -> list[int] | None:
    """Widths for a table wider than the terminal that make lines break between words: each
    column gets its longest word (a path) first while there is room, then a share of the rest in
    proportion to what it still needs. None when the table fits as it is."""
    room = terminal - 3 * len(columns) - 1  # one space of padding either side, one rule between
    if sum(widths) <= room:
        return None
    # A short column (a status, a source like "env ELITE_BASE_MODEL") is kept whole: only the
    # long ones (paths, details) are worth breaking. A path's "words" are its parts after each
    # `/`, where break_long_words breaks it.
    words = [width if width <= SHORT_COLUMN else
             max([len(column), *(len(part) for row in cells for word in row[number].plain.split()
                                 for part in re.split(r"(?<=/)", word))])
             for number, (column, width) in enumerate(zip(columns, widths))]
    while sum(words) > room and max(words) > 12:  # not even the words fit: the widest ones fold
        widest = words.index(max(words))
        words[widest] = max(12, room - (sum(words) - words[widest]))
    wanted = [max(0, width - word) for width, word in zip(widths, words)]
    spare = max(0, room - sum(words))
    shares = [spare * want // max(1, sum(wanted)) for want in wanted]
    return [word + share for word, share in zip(words, shares)]


def break_long_words(cell: Any, width: int) -> Any:
    """A path wider than its column is broken after a `/` (rich would cut it anywhere)."""
    from rich.text import Text

    if all(len(word) <= width for word in cell.plain.split()):
        return cell
    words = []
    for word in cell.plain.split(" "):
        lines, line = [], ""
        for part in re.split(r"(?<=/)", word) if len(word) > width else [word]:
            if line and len(line) + len(part) > width:
                lines.append(line)
                line = ""
            line += part
        words.append("\n".join([*lines, line]))
    return Text(" ".join(words), style=cell.style)


def shorten_home(text: str) -> str:
    """`/home/ann/models/sd` -> `~/models/sd` in what a table shows (--json keeps full paths)."""
    home = str(Path.home())
    if len(home) <= 1:
        return text
    return re.sub(rf"(?<!\S){re.escape(home)}(?=/|\s|$)", "~", text)


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def short_time(iso: str | None) -> str:
    """`2026-11-25T09:41:34.187537Z` -> `2026-11-25 09:41 UTC` for tables (--json keeps the full value)."""
    if not iso:
        return ""
    text = iso.replace("T", " ")
    return f"{text[:16]} UTC" if iso.endswith("Z") else text[:16]


def library_dir() -> Path:
    if options.library is not None:
        library, where = options.library, "--library"
    else:
        from elite_cli.common.paths import default_home

        library, where = default_home(), "ELITE_HOME"
    if library.exists() and not library.is_dir():
        # Else each command fails its own way, naming files inside it ('<file>/config.toml').
        raise InputError(f"the library '{library}' is a file, not a folder; point {where} at a folder "
                         "(it is created on first `elite add`).")
    return library


def effective_settings() -> dict[str, settings_module.Resolved]:
    return settings_module.resolve(library_dir(), options.flags)


def setting(key: str) -> str:
    return effective_settings()[key].value


def library_exists() -> bool:
    """Whether the library folder is there (commands that only read must not create it)."""
    return library_dir().exists()


def open_store(create: bool = True):
    """The concept library. create=False (commands that only read or change existing concepts):
    a library folder that does not exist is an error instead of being made, so a mistyped
    --library or ELITE_HOME does not leave a new empty library behind."""
    from elite_cli.errors import LibraryError
    from elite_cli.library import ConceptStore

    if not create and not library_exists():
        raise LibraryError(f"there is no concept library in '{library_dir()}' yet (`elite add` makes one); "
                           "check --library or ELITE_HOME.")
    return ConceptStore(library_dir())


def model_spec() -> "ModelSpec":
    from elite_cli.model.spec import ModelSpec

    values = effective_settings()
    return ModelSpec(
        base_model=values["base_model"].value,
        image_encoder=values["image_encoder"].value,
        global_mapper=values["global_mapper"].value,
        local_mapper=values["local_mapper"].value,
        device=values["device"].value,
        dtype=values["dtype"].value,
        low_vram=options.low_vram,
        compile=options.compile_unet,
        mapper_cache=str(library_dir() / settings_module.MODELS_DIR_NAME / settings_module.HUB_MAPPERS_DIR),
    )


def loading_message(*models: str) -> str:
    """The spinner's words: downloads are mentioned only when some model is not a local path."""
    if all(Path(str(model)).expanduser().exists() for model in models):
        return "Loading models..."
    return "Loading models (the first run downloads hub models)..."


def download_plans(plans: list, main_process: bool = True) -> None:
    """The API's downloader (Session(downloader=...)): the progress display on stderr, shown by
    the main process only (others download quietly)."""
    from elite_cli.commands.setup import download_with_progress

    download_with_progress(plans, show=main_process)


def fetch_missing_models(spec: "ModelSpec", encoding: bool = True, show: bool = True,
                         segmenter: str | None = None) -> None:
    """Download what the models of `spec` lack in the Hugging Face cache, with a progress display
    (nothing to do, and no network, when everything is there); see hub.missing_downloads."""
    from elite_cli.model.hub import missing_downloads

    plans = missing_downloads(spec, encoding, segmenter)
    if plans:
        download_plans(plans, show)


def load_models_with_status(spec: "ModelSpec" | None = None, encoding: bool = True):
    """Download what is missing, then load (or reuse) the models with a spinner on stderr; returns
    (models, seconds). encoding=False: generation, which needs the image encoder's config only."""
    spec = spec or model_spec()
    fetch_missing_models(spec, encoding)
    with stderr_console().status("Loading models..."):
        from elite_cli.model.loading import load_models

        started = time.perf_counter()
        models = load_models(spec)
    seconds = time.perf_counter() - started
    from elite_cli.library.fingerprints import remember

    # So that `elite list` can tell stale concepts without loading (or importing) anything.
    remember(library_dir(), spec.global_mapper, models.global_fingerprint)
    remember(library_dir(), spec.local_mapper, models.local_fingerprint)
    return models, seconds


def seconds_since_start() -> float:
    """Wall time since this process started, interpreter start-up included (from /proc on Linux;
    elsewhere since elite_cli was imported)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat, open("/proc/uptime", encoding="ascii") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        from elite_cli import IMPORTED_AT

        return time.perf_counter() - IMPORTED_AT


def model_time_line(load_seconds: float | None, loaded_at: float | None = None) -> str:
    """Where a model command's time went: most of it is not the work its other lines report.
    Every figure counts from the process's start (interpreter and imports included), so they add
    up: the loading is part of the time until the models were ready, which is part of the whole.
    loaded_at: time.perf_counter() when the models were ready."""
    now = seconds_since_start()
    whole = f"{now:.1f} s in all since the command started."
    if load_seconds is None:  # nothing needed the models (every picture was stored already)
        return whole[0].upper() + whole[1:]
    # What came before the loading (starting Python, imports, finding the object) depends on the
    # command; the loading alone was reported as if it held the imports, which had often run before.
    ready = now - (time.perf_counter() - loaded_at) if loaded_at is not None else None
    ready_text = f", ready {ready:.1f} s after the command started" if ready is not None else ""
    return f"Models loaded in {load_seconds:.1f} s{ready_text}; {whole}"


def open_session(model_loader: Callable[["ModelSpec"], Any] | None = None) -> "Session":
    """The API session the global options describe: models load behind the spinner above, hub
    downloads show their progress, long steps (finding objects) a spinner."""
    from elite_cli.api import Session

    # The session fetches what each call needs before it loads (gen: not the vision weights), so
    # the loader's own check finds nothing left to download.
    return Session(library_dir(), **options.flags, low_vram=options.low_vram, compile=options.compile_unet,
                   model_loader=model_loader or (lambda spec: load_models_with_status(spec, encoding=False)[0]),
                   downloader=download_plans, activity=lambda text: stderr_console().status(text))


def as_dict(record: Any) -> dict[str, Any]:
    """A library record (StoredConcept, HistoryEntry, ...) as a JSON-ready dict."""
    import dataclasses

    if hasattr(record, "to_dict"):
        return record.to_dict()
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    return dict(record)
