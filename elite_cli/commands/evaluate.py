"""`elite eval`: the command function the main CLI registers (`app.command("eval")(eval_command)`).

Parses, calls elite_cli/evaluation (the steps of run.py, `compare_reports`), prints. Raises
elite's typed errors for the main CLI's one error handler. torch and the model code are imported inside the function, so importing
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

from elite_cli.commands.common import (
    GuidanceOption,
    HeightOption,
    JsonFlag,
    LambdaOption,
    NegativeOption,
    NumberOption,
    SchedulerOption,
    StepsOption,
    WidthOption,
    effective_settings,
    library_dir,
    loading_message,
    model_spec,
)
from elite_cli.errors import InputError
from elite_cli.evaluation import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL

if TYPE_CHECKING:
    from elite_cli.evaluation.compare import Comparison
    from elite_cli.evaluation.runner import EvalReport, EvalSettings
    from elite_cli.model.spec import ModelSpec


NamesArgument = Annotated[Optional[list[str]], typer.Argument(
    help="Concept names from the library, or picture files to encode on the fly.", show_default=False)]
PromptsFileOption = Annotated[Optional[Path], typer.Option(
    "--prompts", help="File of prompt templates, one a line, {} where the concept goes.", show_default=False)]
DreambenchOption = Annotated[
    bool, typer.Option("--dreambench", help="The 25 DreamBench prompts (the default without --prompts).")]
SeedOption = Annotated[
    int, typer.Option("--seed", "-s", help="Seed of the first image of every prompt (image i uses seed + i).")]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", help="Images denoised together; lower it if the GPU runs out of memory.")]
ClassWordOption = Annotated[Optional[list[str]], typer.Option(
    "--class-word", metavar="<name=word>", show_default=False,
    help="NAME=WORD, e.g. mycat=cat (repeatable); else a class-WORD tag on the concept.")]
ClipModelOption = Annotated[Optional[str], typer.Option(
    "--clip-model", metavar="<model>", show_default=False,
    help=f"CLIP for CLIP-T/CLIP-I: hub id or folder (default: the eval_clip_model setting, {DEFAULT_CLIP_MODEL}).")]
DinoModelOption = Annotated[Optional[str], typer.Option(
    "--dino-model", metavar="<model>", show_default=False,
    help=f"DINO ViT for DINO: hub id or folder (default: the eval_dino_model setting, {DEFAULT_DINO_MODEL}).")]
OutputDirOption = Annotated[Optional[Path], typer.Option(
    "--output-dir", "-o", show_default=False,
    help="Folder for images, sheets and results.json (default: ./elite-eval-<time>).")]
AllowStaleOption = Annotated[
    bool, typer.Option("--allow-stale", help="Evaluate concepts encoded with other mapper checkpoints.")]
CompareOption = Annotated[Optional[tuple[Path, Path]], typer.Option(
    "--compare", metavar="<a.json> <b.json>", show_default=False,
    help="Compare two results.json files (B minus A) instead of generating.")]


def eval_command(
    names: NamesArgument = None, prompts_file: PromptsFileOption = None, dreambench: DreambenchOption = False,
    number: NumberOption = 4, seed: SeedOption = 0, steps: StepsOption = 50, guidance: GuidanceOption = 5.0,
    llambda: LambdaOption = 0.8, negative: NegativeOption = "", width: WidthOption = 512, height: HeightOption = 512,
    scheduler: SchedulerOption = "lms", batch_size: BatchSizeOption = 4, class_word: ClassWordOption = None,
    clip_model: ClipModelOption = None, dino_model: DinoModelOption = None, output_dir: OutputDirOption = None,
    allow_stale: AllowStaleOption = False, compare: CompareOption = None, as_json: JsonFlag = False,
) -> None:
    """Measure concepts: CLIP-T (follows the prompt), CLIP-I and DINO (keeps the subject).

    Generates every prompt for every concept (-n images each, like `elite gen`), scores each
    image, and writes the images, a contact sheet per concept and results.json to -o. CLIP-T
    scores the prompt with the concept replaced by its class word (or removed if unknown).

    Example: elite eval mycat --dreambench --class-word mycat=cat -n 4

    Example: elite eval --compare old/results.json new/results.json
    """
    if compare is not None:
        compare_command(names, compare, as_json)
        return
    if not names:
        raise InputError("name at least one concept (or picture file) to evaluate, or pass --compare A.json B.json.")
    if prompts_file is not None and dreambench:
        raise InputError("give either --prompts FILE or --dreambench, not both.")
    from elite_cli.common.outputs import check_output_folder
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
    check_output_folder(directory, empty=True)
    spec, home = model_spec(), library_dir()
    clip_model, dino_model = metric_model_settings(clip_model, dino_model)
    report = run_evaluation(list(names), settings, class_words, spec, home, clip_model, dino_model, directory, allow_stale)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
        typer.echo(f"Images, contact sheets and results.json: {directory}", err=True)


def compare_command(names: list[str] | None, compare: tuple[Path, Path], as_json: bool) -> None:
    """`elite eval --compare A.json B.json`: the table (or JSON) of B minus A, then its warnings."""
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


def metric_model_settings(clip_model: str | None, dino_model: str | None) -> tuple[str, str]:
    """The metric models: the flags, else the eval_clip_model / eval_dino_model settings (their
    environment variables, config.toml, e.g. written by `elite models tiny --use`, or the hub defaults)."""
    values = effective_settings()
    return clip_model or values["eval_clip_model"].value, dino_model or values["eval_dino_model"].value


def run_evaluation(names: list[str], settings: "EvalSettings", class_words: dict[str, str], spec: "ModelSpec",
                   home: Path, clip_model: str, dino_model: str, directory: Path, allow_stale: bool) -> "EvalReport":
    """The evaluation's steps (elite_cli/evaluation/run.py) with their warnings, the loading
    spinner and the progress bar on stderr."""
    from rich.console import Console

    from elite_cli.evaluation.run import evaluate_subjects, evaluation_subjects, load_evaluation_models, plan_evaluation

    plan = plan_evaluation(names, settings, class_words, spec.base_model, home)
    for message in plan.warnings:
        typer.echo(f"Warning: {message}", err=True)
    console = Console(stderr=True, highlight=False)
    with console.status(loading_message(spec.base_model, spec.image_encoder, spec.global_mapper, spec.local_mapper,
                                        clip_model, dino_model)):
        models, metric_models = load_evaluation_models(spec, clip_model, dino_model)
    subjects = evaluation_subjects(plan, models, class_words, allow_stale)
    with progress_bar(console) as advance:
        return evaluate_subjects(subjects, settings, models, metric_models, directory, progress=advance)


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
