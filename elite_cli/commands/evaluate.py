"""`elite eval`: the command function the main CLI registers (`app.command("eval")(eval_command)`).

Parses, calls `EvalRunner` / `compare_reports`, prints. Raises elite's typed errors for the main
CLI's one error handler. torch and the model code are imported inside the function, so importing
this module (for `elite --help`) stays cheap.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Iterator, Optional

import typer

from elite_cli.errors import InputError
from elite_cli.evaluation import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
from elite_cli.model.generation_limits import LAMBDA_RANGE, MAX_IMAGE_SIDE

if TYPE_CHECKING:
    from elite_cli.evaluation.compare import Comparison
    from elite_cli.evaluation.runner import EvalReport
    from elite_cli.model.spec import ModelSpec


def eval_command(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(help="Concept names from the library, or picture files to encode on the fly.", show_default=False),
    ] = None,
    prompts_file: Annotated[
        Optional[Path],
        typer.Option("--prompts", help="File of prompt templates, one a line, {} where the concept goes.", show_default=False),
    ] = None,
    dreambench: Annotated[
        bool, typer.Option("--dreambench", help="The 25 DreamBench prompts (the default without --prompts).")
    ] = False,
    number: Annotated[int, typer.Option("-n", "--number", help="Images per prompt.")] = 4,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Seed of the first image of every prompt (image i uses seed + i).")] = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    llambda: Annotated[
        float, typer.Option("--lambda", help=f"Local detail strength, {LAMBDA_RANGE[0]:g} to {LAMBDA_RANGE[1]:g}.")
    ] = 0.8,
    negative: Annotated[str, typer.Option("--negative", metavar="<text>", help="Negative prompt.")] = "",
    width: Annotated[int, typer.Option(help=f"Image width, a multiple of 8 up to {MAX_IMAGE_SIDE}.")] = 512,
    height: Annotated[int, typer.Option(help=f"Image height, a multiple of 8 up to {MAX_IMAGE_SIDE}.")] = 512,
    scheduler: Annotated[str, typer.Option(metavar="<name>", help="Sampler: lms, ddim, pndm, euler or dpm++.")] = "lms",
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images denoised together; lower it if the GPU runs out of memory.")
    ] = 4,
    class_word: Annotated[
        Optional[list[str]],
        typer.Option("--class-word", metavar="<name=word>", help="NAME=WORD, e.g. mycat=cat (repeatable); else a class-WORD tag on the concept.", show_default=False),
    ] = None,
    clip_model: Annotated[
        Optional[str], typer.Option("--clip-model", metavar="<model>", show_default=False,
                                    help=f"CLIP for CLIP-T/CLIP-I: hub id or folder (default: the eval_clip_model setting, {DEFAULT_CLIP_MODEL}).")
    ] = None,
    dino_model: Annotated[
        Optional[str], typer.Option("--dino-model", metavar="<model>", show_default=False,
                                    help=f"DINO ViT for DINO: hub id or folder (default: the eval_dino_model setting, {DEFAULT_DINO_MODEL}).")
    ] = None,
    output_dir: Annotated[
        Optional[Path],
        typer.Option("--output-dir", "-o", help="Folder for images, sheets and results.json (default: ./elite-eval-<time>).", show_default=False),
    ] = None,
    allow_stale: Annotated[
        bool, typer.Option("--allow-stale", help="Evaluate concepts encoded with other mapper checkpoints.")
    ] = False,
    compare: Annotated[
        Optional[tuple[Path, Path]],
        typer.Option("--compare", metavar="<a.json> <b.json>", help="Compare two results.json files (B minus A) instead of generating.", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure concepts: CLIP-T (follows the prompt), CLIP-I and DINO (keeps the subject).

    Generates every prompt for every concept (-n images each, like `elite gen`), scores each
    image, and writes the images, a contact sheet per concept and results.json to -o. CLIP-T
    scores the prompt with the concept replaced by its class word (or removed if unknown).

    Example: elite eval mycat --dreambench --class-word mycat=cat -n 4

    Example: elite eval --compare old/results.json new/results.json
    """
    if compare is not None:
        if names:
            raise InputError("--compare takes two results.json files and no concept names; drop the names or --compare.")
        from elite_cli.evaluation.compare import compare_reports, read_report

        first, second = compare
        comparison = compare_reports(read_report(first), read_report(second), str(first), str(second))
        if as_json:
            typer.echo(json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False))
        else:
            print_comparison(comparison)
        for warning in comparison.warnings:
            typer.echo(f"Warning: {warning}", err=True)
        return

    if not names:
        raise InputError("name at least one concept (or picture file) to evaluate, or pass --compare A.json B.json.")
    if prompts_file is not None and dreambench:
        raise InputError("give either --prompts FILE or --dreambench, not both.")

    from elite_cli.evaluation.runner import EvalSettings, read_prompt_templates
    from elite_cli.evaluation.subjects import parse_class_words

    settings = EvalSettings(
        prompts=read_prompt_templates(prompts_file) if prompts_file is not None else None,
        num_images=number, seed=seed, steps=steps, guidance_scale=guidance, llambda=llambda,
        width=width, height=height, scheduler=scheduler, negative_prompt=negative, batch_size=batch_size,
    )
    settings.check()
    class_words = parse_class_words(class_word or [])
    directory = output_dir if output_dir is not None else Path(f"elite-eval-{datetime.now():%Y%m%d-%H%M%S}")
    from elite_cli.common.outputs import check_output_folder

    check_output_folder(directory, empty=True)

    spec, home = cli_settings()
    clip_model, dino_model = metric_model_settings(clip_model, dino_model)
    report = run_evaluation(list(names), settings, class_words, spec, home, clip_model, dino_model, directory, allow_stale)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
        typer.echo(f"Images, contact sheets and results.json: {directory}", err=True)


def cli_settings() -> tuple["ModelSpec", Path]:
    """The model spec and library folder chosen by elite's global options (flag, env, config.toml).

    Uses the main CLI's `model_spec()` and `library_dir()`. Only where there is no main CLI
    module at all (this package tested on its own) does it read the environment variables the
    main CLI also reads; a main CLI without those functions is an error, not a silent fallback.
    """
    try:
        import elite_cli.commands as main_cli
    except ModuleNotFoundError as error:
        if error.name != "elite_cli.commands":
            raise
        import os

        from elite_cli.model.spec import DEFAULT_BASE_MODEL, DEFAULT_IMAGE_ENCODER, ModelSpec

        spec = ModelSpec(
            base_model=os.environ.get("ELITE_BASE_MODEL", DEFAULT_BASE_MODEL),
            image_encoder=os.environ.get("ELITE_IMAGE_ENCODER", DEFAULT_IMAGE_ENCODER),
            global_mapper=os.environ.get("ELITE_GLOBAL_MAPPER", ""),
            local_mapper=os.environ.get("ELITE_LOCAL_MAPPER", ""),
            device=os.environ.get("ELITE_DEVICE", "auto"),
            dtype=os.environ.get("ELITE_DTYPE", "auto"),
        )
        return spec, default_library()
    return main_cli.model_spec(), Path(main_cli.library_dir())


def metric_model_settings(clip_model: str | None, dino_model: str | None) -> tuple[str, str]:
    """The metric models: the flags, else the eval_clip_model / eval_dino_model settings (their
    environment variables, config.toml, e.g. written by `elite models tiny --use`, or the hub defaults)."""
    try:
        import elite_cli.commands as main_cli
    except ModuleNotFoundError as error:
        if error.name != "elite_cli.commands":
            raise
        import os

        return (clip_model or os.environ.get("ELITE_EVAL_CLIP_MODEL") or DEFAULT_CLIP_MODEL,
                dino_model or os.environ.get("ELITE_EVAL_DINO_MODEL") or DEFAULT_DINO_MODEL)
    values = main_cli.effective_settings()
    return clip_model or values["eval_clip_model"].value, dino_model or values["eval_dino_model"].value


def default_library() -> Path:
    try:
        from elite_cli.common.paths import default_home
    except ImportError:  # until the library branch's paths.py is merged
        import os

        import platformdirs

        return Path(os.environ.get("ELITE_HOME") or platformdirs.user_data_dir("elite"))
    return Path(default_home())


def open_store(home: Path):
    from elite_cli.library import ConceptStore

    return ConceptStore(home)


def run_evaluation(names: list[str], settings, class_words: dict[str, str], spec: "ModelSpec", home: Path,
                   clip_model: str, dino_model: str, directory: Path, allow_stale: bool) -> "EvalReport":
    """Library look-ups first (typos fail before minutes of model loading), then models, then the run."""
    from rich.console import Console

    from elite_cli.commands.common import loading_message
    from elite_cli.evaluation.subjects import (
        check_class_words,
        check_unique,
        is_picture_path,
        library_subject,
        picture_name,
        picture_subject,
    )

    library_names = [name for name in names if not is_picture_path(name)]
    store = open_store(home) if library_names else None
    subjects = {name: library_subject(store, name, class_words, home) for name in library_names}
    final_names = [subjects[name].name if name in subjects else picture_name(Path(name)) for name in names]
    check_unique(final_names)
    check_class_words(class_words, [*names, *final_names])
    from elite_cli.model.images import prepare_image

    for name in names:  # a picture file that does not decode fails before the models load, as in `elite add`
        if name not in subjects:
            prepare_image(Path(name).expanduser())
    if settings.prompts is not None:  # a template too long for the text encoder fails before any image
        from elite_cli.evaluation.runner import generation_prompt
        from elite_cli.model.text import prompt_fit_warnings

        prompts = [generation_prompt(template, name) for name in final_names for template in settings.prompts]
        for message in prompt_fit_warnings(spec.base_model, prompts, [settings.negative_prompt]) or []:
            typer.echo(f"Warning: {message}", err=True)

    console = Console(stderr=True, highlight=False)
    with console.status(loading_message(spec.base_model, spec.image_encoder, spec.global_mapper, spec.local_mapper,
                                        clip_model, dino_model)):
        from elite_cli.evaluation.metrics import load_metric_models
        from elite_cli.evaluation.runner import EvalRunner, check_fresh
        from elite_cli.model.loading import load_models

        models = load_models(spec)
        metric_models = load_metric_models(clip_model, dino_model, models.device)
    if not allow_stale:
        check_fresh(list(subjects.values()), models)
    if len(library_names) < len(names):
        from elite_cli.model.encoder import Encoder

        encoder = Encoder(models)
        for name in names:
            if name not in subjects:
                subjects[name] = picture_subject(Path(name).expanduser(), encoder, class_words)
    ordered = [subjects[name] for name in names]
    import warnings

    from elite_cli.model.text import PromptTruncatedWarning

    with progress_bar(console) as advance, warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)  # reported above, once per prompt
        return EvalRunner(models, metric_models).run(ordered, settings, directory, progress=advance)


@contextmanager
def progress_bar(console) -> Iterator[Callable[[int, int, str], None]]:
    """A progress callback drawing a rich bar on stderr (images done / all images), removed at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("Generating", total=None)

        def advance(done: int, total: int, label: str) -> None:
            label = label if len(label) <= 40 else label[:39] + "…"
            bar.update(task, completed=done, total=total, description=label)

        yield advance


# ---- printing --------------------------------------------------------------------------------

def format_score(summary: dict) -> str:
    if summary.get("mean") is None:
        return "-"
    std = summary.get("std")
    return f"{summary['mean']:.3f} ± {std:.3f}" if std is not None else f"{summary['mean']:.3f}"


def format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def print_report(report: "EvalReport") -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from elite_cli.evaluation.runner import METRIC_LABELS, METRICS

    data = report.to_dict()
    table = Table(show_edge=False, header_style="bold", title="mean ± std (sample), n = images",
                  caption="CLIP-T scores each prompt with the concept replaced by its class word (removed where the class word is -).")
    for column in ["concept", "class word", "n", *(METRIC_LABELS[metric] for metric in METRICS)]:
        table.add_column(column, overflow="fold")
    for name, concept in data["concepts"].items():
        # Cells are Text, never markup: names and class words may hold '['.
        table.add_row(Text(name), Text(concept["class_word"] or "-"), str(concept["clip_t"]["count"]),
                      *(format_score(concept[metric]) for metric in METRICS))
    table.add_section()
    overall = data["overall"]
    table.add_row(Text("overall", style="bold"), "", str(overall["clip_t"]["count"]),
                  *(format_score(overall[metric]) for metric in METRICS))
    Console(highlight=False, file=sys.stdout).print(table)


def print_comparison(comparison: "Comparison") -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from elite_cli.evaluation.runner import METRIC_LABELS, METRICS

    console = Console(highlight=False, file=sys.stdout)
    console.print(Text(f"A = {comparison.first}\nB = {comparison.second}"))
    table = Table(show_edge=False, header_style="bold", title="A → B (B minus A)")
    table.add_column("concept", overflow="fold")
    for metric in METRICS:
        table.add_column(METRIC_LABELS[metric], justify="right")

    def cells(metrics) -> list[str]:
        # One cell per metric keeps the table readable in 80 columns.
        return [f"{format_value(metrics[metric].first)} → {format_value(metrics[metric].second)} "
                f"({format_delta(metrics[metric].delta)})" for metric in METRICS]

    for name, metrics in comparison.rows.items():
        table.add_row(Text(name), *cells(metrics))
    table.add_section()
    table.add_row(Text("overall", style="bold"), *cells(comparison.overall))
    console.print(table)
    if comparison.differences:
        differences = Table(show_edge=False, header_style="bold", title="what differs")
        for column in ("setting", "A", "B"):
            differences.add_column(column, overflow="fold")
        for key, first, second in comparison.differences:
            # A setting one run lacks is null in its results.json: shown as "-", like missing scores.
            differences.add_row(Text(key), Text("-" if first is None else json.dumps(first)),
                                Text("-" if second is None else json.dumps(second)))
        console.print(differences)
