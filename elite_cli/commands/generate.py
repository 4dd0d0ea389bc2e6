"""`elite gen` and `elite history`: parse, call the API (`Session.generate`/`repeat`/`history`),
print. Registered on `elite_cli.commands.common.app`; `elite_cli.commands` imports this module."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

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
    app,
    as_dict,
    echo_json,
    model_time_line,
    open_session,
    print_rows,
    short_time,
    stderr_console,
)
from elite_cli.errors import InputError
from elite_cli.generation.jobs import (  # noqa: F401  (GenerationJob, jobs_from_*: re-exported for older imports)
    GenerationJob,
    jobs_from_history,
    jobs_from_png,
    read_prompts_file,
    repeated_prompts,
)
from elite_cli.generation.run import GenerationListener, GenerationResult, check_run_options
from elite_cli.common.wording import counted, speed


def check_gpus_value(value: str | None) -> str | None:
    """--gpus takes 'all' or a positive number; refused as a usage error before anything else runs."""
    if value is not None and value != "all" and not (value.isdigit() and int(value) >= 1):
        raise typer.BadParameter(f"{value!r} is not 'all' or a positive number of GPUs (e.g. --gpus 2).")
    return value


def positive_limit(value: int) -> int:
    """--limit of `elite history`: a number of runs, 0 meaning all of them."""
    if value < 0:
        raise typer.BadParameter(f"{value} is not a number of runs; pass a positive number, or 0 for every run.")
    return value


# gen's options that decide what the images look like: --again takes all of them from the run
# it repeats, so giving one too would be silently ignored. (-o, --resume, --batch-size, --gpus
# and --allow-stale only say where and how to make the same images.)
IMAGE_OPTIONS = {
    "number": "-n", "seed": "--seed", "steps": "--steps", "guidance": "--guidance", "llambda": "--lambda",
    "negative": "--negative", "width": "--width", "height": "--height", "scheduler": "--scheduler",
    "init_image": "--init-image", "strength": "--strength", "inpaint": "--inpaint", "region": "--region",
    "region_object": "--object", "inpaint_model": "--inpaint-model", "control": "--control",
    "control_scale": "--control-scale", "control_image_is_map": "--control-image-is-map",
}


def options_given(context: typer.Context, names: dict[str, str]) -> list[str]:
    """The flags among `names` ({parameter: flag}) that the user typed (or set by environment)."""
    given = []
    for parameter, flag in names.items():
        source = context.get_parameter_source(parameter)
        if source is not None and source.name != "DEFAULT":
            given.append(flag)
    return given


PromptArgument = Annotated[Optional[str], typer.Argument(help="Text with <concept> placeholders.", show_default=False)]
SeedOption = Annotated[Optional[int], typer.Option("--seed", "-s", help="Seed of the first image (default: random).")]
OutputDirOption = Annotated[Optional[Path], typer.Option(
    "--output-dir", "-o", help="Folder for the PNGs (default: ./elite-out, or config).", show_default=False)]
PromptsFileOption = Annotated[
    Optional[Path], typer.Option("--prompts", help="File with one prompt per line.", show_default=False)]
AgainOption = Annotated[Optional[str], typer.Option(
    "--again", metavar="<run|file.png>", help="Repeat a run: history id or a PNG from elite gen.", show_default=False)]
AllowStaleOption = Annotated[
    bool, typer.Option("--allow-stale", help="Use concepts encoded with other mapper checkpoints.")]
BatchSizeOption = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", help="Images denoised together (default: sized for the device).", show_default=False)]
GpusOption = Annotated[Optional[str], typer.Option(
    "--gpus", metavar="<all|N>", callback=check_gpus_value,
    help="Spread the images over this many local GPUs ('all' or N), via accelerate.", show_default=False)]
InitImageOption = Annotated[Optional[Path], typer.Option(
    "--init-image", metavar="FILE", help="Start from this picture (img2img); see --strength.", show_default=False)]
StrengthOption = Annotated[Optional[float], typer.Option(
    "--strength", metavar="S", help="How much of the picture is repainted, 0 < S <= 1 (default 0.8; inpainting 1).",
    show_default=False)]
InpaintOption = Annotated[Optional[Path], typer.Option(
    "--inpaint", metavar="FILE", help="Repaint a region of this picture; see --region.", show_default=False)]
RegionOption = Annotated[Optional[str], typer.Option(
    "--region", metavar="<MASK|auto>", help="With --inpaint: mask picture (white = repaint), or auto (see --object).",
    show_default=False)]
RegionObjectOption = Annotated[Optional[str], typer.Option(
    "--object", metavar="TEXT", help="With --region auto: what the segmenter finds to repaint.", show_default=False)]
InpaintModelOption = Annotated[Optional[str], typer.Option(
    "--inpaint-model", metavar="ID|DIR", help="A 9-channel SD inpainting model (default: the inpaint_model setting; "
    "empty: the base model).", show_default=False)]
ControlOption = Annotated[Optional[list[str]], typer.Option(
    "--control", metavar="KIND=FILE", help="Follow the picture's edges or depth with a ControlNet: canny=FILE, depth=FILE.",
    show_default=False)]
ControlScaleOption = Annotated[float, typer.Option("--control-scale", help="How strongly the ControlNets steer.")]
ControlIsMapOption = Annotated[bool, typer.Option(
    "--control-image-is-map", help="The --control pictures are ready edge/depth maps.")]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Skip images this command already wrote in the output folder.")]


@app.command()
def gen(
    context: typer.Context, prompt: PromptArgument = None, number: NumberOption = 1, seed: SeedOption = None,
    steps: StepsOption = 50, guidance: GuidanceOption = 5.0, llambda: LambdaOption = 0.8, negative: NegativeOption = "",
    width: WidthOption = 512, height: HeightOption = 512, scheduler: SchedulerOption = "lms",
    output_dir: OutputDirOption = None, prompts_file: PromptsFileOption = None, again: AgainOption = None,
    allow_stale: AllowStaleOption = False, batch_size: BatchSizeOption = None, gpus: GpusOption = None,
    resume: ResumeOption = False, as_json: JsonFlag = False, init_image: InitImageOption = None,
    strength: StrengthOption = None, inpaint: InpaintOption = None, region: RegionOption = None,
    region_object: RegionObjectOption = None, inpaint_model: InpaintModelOption = None, control: ControlOption = None,
    control_scale: ControlScaleOption = 1.0, control_image_is_map: ControlIsMapOption = False,
) -> None:
    """Generate images from a prompt that names concepts as <name>.

    Files are named <time>-<prompt>-<seed>.png and never overwritten; each PNG holds its full parameters (A1111 `parameters` text and an `elite` JSON chunk). Image i uses seed + i. Under `accelerate launch`/`torchrun`, or with --gpus, the images are shared out between processes; each image is the same whichever process makes it.

    Example: elite gen "<mycat> on the beach" -n 4 --seed 7

    Example: elite gen --prompts prompts.txt -n 8 --seed 1 --gpus all --resume

    Example: elite gen "<mycat> sleeping" --inpaint sofa.jpg --region spot.png  (more in docs/modes.md)
    """
    from elite_cli.generation.workers import launched_world_size

    check_prompt_sources(context, prompt, prompts_file, again)
    check_run_options(batch_size=batch_size, resume=resume, seed_known=seed is not None or again is not None)
    if gpus is not None and launched_world_size() <= 1:
        launch_on_gpus(gpus)
    session = open_session()
    where = dict(output_dir=output_dir, batch_size=batch_size, resume=resume, allow_stale=allow_stale)
    with CliGenerationListener(as_json) as listener, say_how_to_resume(listener, seed_drawn=again is None and seed is None):
        if again is not None:
            result = session.repeat(again, **where, listener=listener)
        else:
            prompts = [prompt] if prompt is not None else read_prompts_file(prompts_file)
            warn_about_repeated_prompts(prompts, prompts_file)
            modes = dict(init_image=init_image, strength=strength, inpaint=inpaint, region=region,
                         region_object=region_object, inpaint_model=inpaint_model, control=control or (),
                         control_scale=control_scale, control_image_is_map=control_image_is_map)
            result = session.generate(prompts, n=number, seed=seed, steps=steps, guidance=guidance, lambda_=llambda,
                                      negative_prompt=negative, width=width, height=height, scheduler=scheduler,
                                      **where, **modes, listener=listener)
    if result.is_main:
        report_generation(result, as_json)
        if not as_json and result.images:
            typer.echo(model_time_line(session.model_load_seconds, session.models_loaded_at), err=True)


def check_prompt_sources(context: typer.Context, prompt: str | None, prompts_file: Path | None,
                         again: str | None) -> None:
    """One source of prompts; --again takes its image settings from the run, so none may be given."""
    sources = [value for value in (prompt, prompts_file, again) if value is not None]
    if len(sources) != 1:
        raise InputError("give exactly one of PROMPT, --prompts FILE or --again ID.")
    if again is not None:
        clashing = options_given(context, IMAGE_OPTIONS)
        if clashing:
            raise InputError(f"--again repeats the run with its own settings, so it cannot be combined with "
                             f"{', '.join(clashing)}; drop {'it' if len(clashing) == 1 else 'them'}, or start a new run "
                             "from the prompt instead.")


def launch_on_gpus(gpus: str) -> None:
    """Run this very command once per GPU under accelerate and exit with its status (one GPU: return)."""
    from elite_cli.generation.workers import launch_command, without_gpus_option

    processes = gpu_count(gpus)
    if processes > 1:
        import subprocess
        import sys

        # accelerate starts one copy of this command per GPU; each finds its share by rank.
        raise typer.Exit(subprocess.call(launch_command(processes, without_gpus_option(sys.argv[1:]))))


def warn_about_repeated_prompts(prompts: list[str], prompts_file: Path | None) -> None:
    repeated = repeated_prompts(prompts)
    if repeated and os.environ.get("RANK", "0") == "0":  # said once, by the first of several processes
        from elite_cli.model.text import quoted_start

        typer.echo(f"Warning: {prompts_file} holds {quoted_start(repeated[0])}"
                   f"{f' (and {len(repeated) - 1} more)' if len(repeated) > 1 else ''} more than once; every prompt "
                   "starts at the same seed, so the copies make the same images again.", err=True)


@contextmanager
def say_how_to_resume(listener: "CliGenerationListener", seed_drawn: bool) -> Iterator[None]:
    """Ctrl-C while images are made: the `Interrupted` line says how to make only the missing ones.

    A seed elite drew itself (`seed_drawn`) is printed only at the end, so the hint carries it
    (`--resume` needs the run's seed). One process counts the images it saved; several each know
    only their own share. Before the plan (models loading), Ctrl-C is a plain interruption.
    """
    try:
        yield
    except KeyboardInterrupt:
        if listener.plan is None:
            raise
        seed = f" --seed {listener.jobs[0].seed}" if seed_drawn and listener.jobs else ""
        done = f"{counted(listener.saved, 'image')} saved; " if listener.processes == 1 else ""
        raise KeyboardInterrupt(f"{done}to make only the missing ones, run the same command with{seed} --resume") from None


def report_generation(result: GenerationResult, as_json: bool) -> None:
    """What the main process prints once every image is made: JSON, or the seed and speed lines."""
    written = [{"path": str(image.path), "prompt": image.prompt, "seed": image.seed, "run_id": result.run_id}
               for image in result.images]
    if not result.images:
        # Nothing was generated, so no history rows carry this run id: printing it would point
        # `--again` at a run that does not exist.
        if as_json:
            echo_json(written)
        what = "the image of this command is" if result.skipped == 1 else f"all {result.skipped} images of this command are"
        typer.echo(f"Nothing left to make: {what} already in '{result.output_dir}' (--resume).", err=True)
        return
    if as_json:
        echo_json(written)
        return
    if result.processes > 1:
        for item in written:
            typer.echo(item["path"])
    note = " (image i uses seed + i)" if any(job.num_images > 1 for job in result.jobs) else ""
    run = result.run_id[:8]
    typer.echo(f"Seed: {', '.join(map(str, result.seeds))}{note}; run {run} (repeat: elite gen --again {run})", err=True)
    seconds = result.seconds
    skipped = f", {result.skipped} already there (--resume)" if result.skipped else ""
    typer.echo(f"{counted(len(result.images), 'image')} in {seconds:.1f} s on "
               f"{counted(result.processes, 'process', 'processes')}: "
               f"{speed(len(result.images), seconds * result.processes)} per process{skipped}.", err=True)


def gpu_count(value: str) -> int:
    """--gpus all|N as a number of processes; needs CUDA GPUs."""
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise InputError("--gpus needs CUDA GPUs and none are visible; leave --gpus out to run on this device.")
    if value == "all":
        return available
    if not value.isdigit() or not 1 <= int(value) <= available:
        raise InputError(f"--gpus must be 'all' or a number from 1 to {available}, not {value!r}.")
    return int(value)


class CliGenerationListener(GenerationListener):
    """gen's output while the API generates: warnings and (one process) each path on their lines,
    and rich bars on stderr (main process only): images done across all processes, and steps of
    the current batch. Other processes' progress is read from the files they have written."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.progress = None
        self.processes = 1
        self.plan, self.jobs = None, []
        self.saved = 0  # images this process saved (the Ctrl-C hint counts them)

    def __enter__(self) -> "CliGenerationListener":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def warning(self, message: str) -> None:
        typer.echo(f"Warning: {message}", err=True)

    def precision(self, line: str) -> None:
        if not self.as_json:
            typer.echo(f"Precision: {line}", err=True)

    def planned(self, plan: Any, jobs: list[GenerationJob], directory: Path, processes: int, is_main: bool) -> None:
        self.plan, self.jobs, self.directory, self.processes = plan, jobs, directory, processes
        if is_main and not self.as_json:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.progress = Progress(*columns, console=stderr_console(), transient=True)
            self.progress.__enter__()
            self.images = self.progress.add_task("images", total=len(plan.images))
            self.steps = self.progress.add_task("steps", total=None)

    def step(self, step: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.steps, completed=step, total=total)

    def image_saved(self, image: Any) -> None:
        self.saved += 1
        if self.processes == 1 and not self.as_json:
            typer.echo(str(image.path))

    def batch_done(self) -> None:
        if self.progress is not None:
            from elite_cli.generation.plan import planned_path

            done = sum(planned_path(self.plan, self.jobs, self.directory, image).exists() for image in self.plan.images)
            self.progress.update(self.images, completed=done)


@app.command()
def history(
    limit: Annotated[
        int, typer.Option("--limit", "-l", callback=positive_limit, help="How many runs to show, newest first (0: all).")
    ] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List earlier `elite gen` runs; repeat one with `elite gen --again RUN`.

    Example: elite history --limit 5
    """
    summaries = [run.to_dict() for run in open_session().history(limit=None if limit == 0 else limit)]
    if as_json:
        echo_json(summaries)
        return
    if not summaries:
        typer.echo('No runs yet; generate with `elite gen "<name> ..."`.')
        return
    # One line per run: the first prompt stands for the others (all of them are in --json).
    rows = [
        [run["run_id"][:8], short_time(run["created"]), run["seed"], len(run["images"]),
         first_prompt_and_count(run["prompts"])]
        for run in summaries
    ]
    # The prompt comes last: on a narrow terminal it is the one cell that gets cut.
    print_rows(["run", "when", "seed", "images", "prompt"], rows, cut_column="prompt")


def first_prompt_and_count(prompts: list[str]) -> str:
    """`<mycat> on the beach (+2 more prompts)`; newlines would break the one-line row."""
    first = " ".join(prompts[0].split())
    others = len(prompts) - 1
    return first if others == 0 else f"{first} (+{others} more prompt{'s' if others > 1 else ''})"
