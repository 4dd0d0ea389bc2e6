"""`elite gen` and `elite history`. Registered on `elite_cli.cli.app` when that module is imported."""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elite_cli import __version__
from elite_cli.cli import (
    JsonFlag,
    app,
    as_dict,
    check_file_exists,
    echo_json,
    fetch_missing_models,
    load_models_with_status,
    model_spec,
    library_exists,
    open_store,
    print_rows,
    short_time,
    setting,
    stderr_console,
)
from elite_cli.errors import InputError
from elite_cli.generation_limits import LAMBDA_RANGE, MAX_IMAGE_SIDE, SEED_LIMIT, check_image_settings
from elite_cli.outputs import GenerationRecord, read_png_parameters, save_png
from elite_cli.wording import counted


@dataclass
class GenerationJob:
    """One prompt's images in an `elite gen` call; image i uses seed + i."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 50
    guidance_scale: float = 5.0
    llambda: float = 0.8
    width: int = 512
    height: int = 512
    scheduler: str = "lms"
    num_images: int = 1
    # {name in the prompt: library id} when repeating a run: the concept it really used, even
    # if that name was renamed or given to another concept since.
    concept_ids: dict[str, str] = field(default_factory=dict)
    # The models a repeated run recorded (base_model, image_encoder, mapper fingerprints).
    recorded_models: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Fail before any model loads if a parameter cannot work."""
        from elite_cli.prompts import check_placeholders

        check_image_settings(width=self.width, height=self.height, steps=self.steps, guidance_scale=self.guidance_scale,
                             llambda=self.llambda, seed=self.seed, num_images=self.num_images, scheduler=self.scheduler)
        if not self.prompt.strip():
            raise InputError('the prompt is empty; pass text such as "<mycat> on the beach".')
        check_placeholders(self.prompt)

    def settings(self) -> dict[str, Any]:
        """What the history keeps besides prompt, negative prompt and seed."""
        return {
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "llambda": self.llambda,
            "width": self.width,
            "height": self.height,
            "scheduler": self.scheduler,
        }


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    check_file_exists(path, "prompts file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad) is not prompt text
    except UnicodeDecodeError:
        raise InputError(f"prompts file '{path}' is not UTF-8 text; save it as UTF-8, one prompt per line.") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"prompts file '{path}' holds no prompts; write one prompt per line.")
    return prompts


def repeated_prompts(prompts: list[str]) -> list[str]:
    """Prompts a --prompts file holds more than once: every prompt starts at the same seed, so
    the copies would only make the same images again."""
    seen: dict[str, int] = {}
    for prompt in prompts:
        seen[prompt] = seen.get(prompt, 0) + 1
    return [prompt for prompt, count in seen.items() if count > 1]


# What a generated image records about the models that made it (PNG chunk and history rows).
MODEL_KEYS = {"base_model": "base model", "image_encoder": "image encoder", "global_mapper": "global mapper",
              "local_mapper": "local mapper"}


def model_changes(jobs: list[GenerationJob], current: dict[str, Any]) -> list[str]:
    """`--again` with other models than the run's makes other images: the settings that differ."""
    changed = []
    for key, label in MODEL_KEYS.items():
        recorded = {job.recorded_models[key] for job in jobs if key in job.recorded_models}
        if recorded and recorded != {str(current[key])}:
            changed.append(f"{label} {sorted(recorded)[0]!r} (now {current[key]!r})")
    return changed


def jobs_from_png(path: Path) -> list[GenerationJob]:
    """A PNG written by `elite gen` describes one image: repeat exactly that one."""
    check_file_exists(path, "PNG")
    parameters = read_png_parameters(path)
    try:
        return [
            GenerationJob(
                prompt=str(parameters["prompt"]),
                negative_prompt=str(parameters["negative_prompt"]),
                seed=int(parameters["seed"]),
                num_images=1,
                concept_ids={str(name): str(concept_id) for name, concept_id in (parameters.get("concepts") or {}).items()},
                steps=int(parameters["steps"]),
                guidance_scale=float(parameters["guidance_scale"]),
                llambda=float(parameters["llambda"]),
                width=int(parameters["width"]),
                height=int(parameters["height"]),
                scheduler=str(parameters["scheduler"]),
                recorded_models={key: str(parameters[key]) for key in MODEL_KEYS if parameters.get(key)},
            )
        ]
    except (TypeError, ValueError, AttributeError) as error:
        raise InputError(f"'{path}' has a damaged elite parameters chunk ({error}); pass a PNG written by `elite gen`.") from None


def jobs_from_history(store: Any, run_id: str) -> list[GenerationJob]:
    """The jobs of an earlier run, from its history rows (one row per image), in their order.

    Rows record their job's number and image count, so a run that was interrupted before some
    images were made is rebuilt whole (and `--again RUN --resume` makes what is missing).
    """
    jobs: dict[tuple, tuple[int, GenerationJob]] = {}
    for entry in store.get_run(run_id):
        first_seed = entry.seed - entry.image_index
        settings = {key: entry.parameters[key] for key in GenerationJob("").settings() if key in entry.parameters}
        number = int(entry.parameters.get("job", len(jobs)))
        key = (number, entry.prompt, entry.negative_prompt, first_seed, tuple(sorted(settings.items())))
        # Rows written before the image count was recorded: the highest finished index tells.
        count = int(entry.parameters.get("num_images", entry.image_index + 1))
        if key in jobs:
            jobs[key][1].num_images = max(jobs[key][1].num_images, count)
        else:
            job = GenerationJob(
                prompt=entry.prompt,
                negative_prompt=entry.negative_prompt,
                seed=first_seed,
                num_images=count,
                concept_ids=dict(entry.concept_ids),
                recorded_models={key: str(entry.parameters[key]) for key in MODEL_KEYS if entry.parameters.get(key)},
                **settings,
            )
            jobs[key] = (number, job)
    return [job for _, job in sorted(jobs.values(), key=lambda item: item[0])]


def load_concepts(store: Any, jobs: list[GenerationJob], again: str | None = None) -> dict[str, tuple[Any, Any]]:
    """{name: (record, concept)} for every concept the prompts mention, loaded before the models
    so that a typo fails fast. A repeated run's concepts are found by the ids it recorded."""
    from elite_cli.errors import ConceptNotFound
    from elite_cli.prompts import concept_names

    concepts: dict[str, tuple[Any, Any]] = {}
    for job in jobs:
        for name in concept_names(job.prompt):
            if name in concepts:
                continue
            concept_id = job.concept_ids.get(name)
            if concept_id is None:
                try:
                    concepts[name] = (store.get(name), store.load(name))
                except ConceptNotFound as error:
                    if len(jobs) == 1:
                        raise
                    # In a prompts file, say which prompt names it.
                    from elite_cli.text import quoted_start

                    raise ConceptNotFound(f"the prompt {quoted_start(job.prompt)}: {error}") from None
                continue
            try:
                record = store.get(concept_id)
            except ConceptNotFound:
                raise ConceptNotFound(
                    f"concept <{name}> that {again or 'this run'} used (id {concept_id[:19]}) is no longer in the library "
                    "(removed or re-encoded); add it again and generate with a new prompt instead of --again."
                ) from None
            concepts[name] = (record, store.load(record.id))
    return concepts


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
}


def options_given(context: typer.Context, names: dict[str, str]) -> list[str]:
    """The flags among `names` ({parameter: flag}) that the user typed (or set by environment)."""
    given = []
    for parameter, flag in names.items():
        source = context.get_parameter_source(parameter)
        if source is not None and source.name != "DEFAULT":
            given.append(flag)
    return given


@app.command()
def gen(
    context: typer.Context,
    prompt: Annotated[
        Optional[str], typer.Argument(help="Text with <concept> placeholders.", show_default=False)
    ] = None,
    number: Annotated[int, typer.Option("-n", "--number", help="Images per prompt.")] = 1,
    seed: Annotated[
        Optional[int], typer.Option("--seed", "-s", help="Seed of the first image (default: random).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    llambda: Annotated[
        float, typer.Option("--lambda", help=f"Local detail strength, {LAMBDA_RANGE[0]:g} to {LAMBDA_RANGE[1]:g}: higher = more faithful, less editable.")
    ] = 0.8,
    negative: Annotated[str, typer.Option("--negative", metavar="<text>", help="Negative prompt.")] = "",
    width: Annotated[int, typer.Option(help=f"Image width, a multiple of 8 up to {MAX_IMAGE_SIDE}.")] = 512,
    height: Annotated[int, typer.Option(help=f"Image height, a multiple of 8 up to {MAX_IMAGE_SIDE}.")] = 512,
    scheduler: Annotated[str, typer.Option(metavar="<name>", help="Sampler: lms (as in the ELITE paper), ddim, pndm, euler or dpm++.")] = "lms",
    output_dir: Annotated[
        Optional[Path],
        typer.Option("--output-dir", "-o", help="Folder for the PNGs (default: ./elite-out, or config).", show_default=False),
    ] = None,
    prompts_file: Annotated[
        Optional[Path], typer.Option("--prompts", help="File with one prompt per line.", show_default=False)
    ] = None,
    again: Annotated[
        Optional[str], typer.Option("--again", metavar="<run|file.png>", help="Repeat a run: history id or a PNG from elite gen.", show_default=False)
    ] = None,
    allow_stale: Annotated[
        bool, typer.Option("--allow-stale", help="Use concepts encoded with other mapper checkpoints.")
    ] = False,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", "-b", help="Images denoised together (default: sized for the device).", show_default=False)
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option("--gpus", metavar="<all|N>", callback=check_gpus_value,
                     help="Spread the images over this many local GPUs ('all' or N), via accelerate.", show_default=False)
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip images this command already wrote in the output folder.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate images from a prompt that names concepts as <name>.

    Files are named <time>-<prompt>-<seed>.png and never overwritten; each PNG holds its full parameters (A1111 `parameters` text and an `elite` JSON chunk). Image i uses seed + i. Under `accelerate launch`/`torchrun`, or with --gpus, the images are shared out between processes; each image is the same whichever process makes it.

    Example: elite gen "<mycat> on the beach" -n 4 --seed 7

    Example: elite gen --prompts prompts.txt -n 8 --seed 1 --gpus all --resume
    """
    from elite_cli.workers import join_workers, launch_command, launched_world_size, without_gpus_option

    sources = [value for value in (prompt, prompts_file, again) if value is not None]
    if len(sources) != 1:
        raise InputError("give exactly one of PROMPT, --prompts FILE or --again ID.")
    if again is not None:
        clashing = options_given(context, IMAGE_OPTIONS)
        if clashing:
            raise InputError(f"--again repeats the run with its own settings, so it cannot be combined with "
                             f"{', '.join(clashing)}; drop {'it' if len(clashing) == 1 else 'them'}, or start a new run "
                             "from the prompt instead.")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}.")
    if resume and seed is None and again is None:
        raise InputError("--resume needs the seed of the run to resume; pass the same --seed (or use --again RUN).")
    if gpus is not None and launched_world_size() <= 1:
        processes = gpu_count(gpus)
        if processes > 1:
            import subprocess
            import sys

            # accelerate starts one copy of this command per GPU; each finds its share by rank.
            raise typer.Exit(subprocess.call(launch_command(processes, without_gpus_option(sys.argv[1:]))))
    store = open_store()
    if again is not None:
        # A file (a PNG, or a picture that is not one: said so, not "no such run") or a run id.
        is_file = again.lower().endswith((".png", ".jpg", ".jpeg", ".webp")) or Path(again).is_file()
        jobs = jobs_from_png(Path(again)) if is_file else jobs_from_history(store, again)
    else:
        prompts = [prompt] if prompt is not None else read_prompts_file(prompts_file)
        repeated = repeated_prompts(prompts)
        if repeated and os.environ.get("RANK", "0") == "0":  # said once, by the first of several processes
            from elite_cli.text import quoted_start

            typer.echo(f"Warning: {prompts_file} holds {quoted_start(repeated[0])}"
                       f"{f' (and {len(repeated) - 1} more)' if len(repeated) > 1 else ''} more than once; every prompt "
                       "starts at the same seed, so the copies make the same images again.", err=True)
        first_seed = secrets.randbelow(max(1, SEED_LIMIT - number)) if seed is None else seed
        jobs = [
            GenerationJob(
                prompt=text,
                negative_prompt=negative,
                seed=first_seed,
                steps=steps,
                guidance_scale=guidance,
                llambda=llambda,
                width=width,
                height=height,
                scheduler=scheduler,
                num_images=number,
            )
            for text in prompts
        ]
    for job in jobs:
        job.check()
    directory = output_dir if output_dir is not None else Path(setting("output_dir"))
    from elite_cli.outputs import check_output_folder

    check_output_folder(directory)
    concepts = load_concepts(store, jobs, again)

    from elite_cli.generator import Generator

    spec = model_spec()
    workers = join_workers(spec.device)
    if workers.device is not None:
        spec = dataclasses.replace(spec, device=workers.device)
    # The first run downloads the models (generation needs the image encoder's config only).
    fetch_missing_models(spec, encoding=False, show=workers.is_main)
    # Prompts that do not fit the text encoder fail (or warn) now, not after some images exist.
    reported_warnings = check_prompts_fit(spec, jobs, show=workers.is_main)
    models, _ = load_models_with_status(spec, encoding=False)
    if not allow_stale:
        from elite_cli.concept import refuse_stale

        refuse_stale(((name, record.name, concept) for name, (record, concept) in concepts.items()),
                     models.global_fingerprint, models.local_fingerprint)
    if workers.is_main:
        from elite_cli.concept import outdated_preprocessing_warnings

        for line in outdated_preprocessing_warnings((name, record.name, concept)
                                                    for name, (record, concept) in concepts.items()):
            typer.echo(line, err=True)
    generator = Generator(models)
    model_parameters = {
        "base_model": models.spec.base_model,
        "image_encoder": models.spec.image_encoder,
        "global_mapper": models.global_fingerprint,
        "local_mapper": models.local_fingerprint,
        "elite_version": __version__,
    }
    if again is not None and workers.is_main:
        changed = model_changes(jobs, model_parameters)
        if changed:
            typer.echo(f"Warning: {again} was made with other models, so the images may differ: {'; '.join(changed)}.",
                       err=True)
    started = time.perf_counter()
    # Every process must cut the same batches: take the size that fits the fullest GPU.
    agreed_batch_size = workers.smallest(batch_size or default_batch_size(models, jobs))
    plan = None
    if workers.is_main:
        from elite_cli.gen_plan import plan_generation

        plan = plan_generation(jobs, directory, store.new_run_id(), agreed_batch_size, model_parameters, resume=resume)
    plan = workers.share(plan)

    from elite_cli.prompts import concept_names

    # The paths really written: a name reserved in the plan can still be taken by another
    # program before we save, and save_png then picks the next free suffix.
    saved: list[tuple[int, int, str]] = []
    with GenerationProgress(plan, jobs, directory, show=workers.is_main and not as_json) as progress:
        for batch in plan.share(workers.rank, workers.world):
            batch_jobs = [jobs[image.job] for image in batch]
            wanted = {name: concepts[name] for job in batch_jobs for name in concept_names(job.prompt)}
            batch_started = time.perf_counter()
            images = generate_batch(generator, batch, batch_jobs, {name: concept for name, (_, concept) in wanted.items()},
                                    progress, reported_warnings)
            seconds_per_image = (time.perf_counter() - batch_started) / len(images)
            for image, planned, job in zip(images, batch, batch_jobs):
                concept_ids = {name: concepts[name][0].id for name in concept_names(job.prompt)}
                record = GenerationRecord(
                    prompt=job.prompt,
                    negative_prompt=job.negative_prompt,
                    seed=planned.seed,
                    index=planned.index,
                    concepts=concept_ids,
                    run_id=plan.run_id,
                    **job.settings(),
                    **model_parameters,
                )
                path = save_png(image, directory, record, plan.when, first_suffix=planned.suffix)
                saved.append((planned.job, planned.index, str(path)))
                # One history row per saved image, right after its file: an interruption leaves
                # complete files with complete rows. SQLite's WAL lets every process write.
                store.record_generation(
                    run_id=plan.run_id,
                    prompt=job.prompt,
                    negative_prompt=job.negative_prompt,
                    seed=planned.seed,
                    image_index=planned.index,
                    parameters={**job.settings(), **model_parameters, "job": planned.job, "num_images": job.num_images},
                    concept_ids=concept_ids,
                    output_path=path.resolve(),
                    duration_s=round(seconds_per_image, 3),
                )
                if workers.world == 1 and not as_json:
                    typer.echo(str(path))
            progress.images_done()
        saved = workers.collect(saved)
    if not workers.is_main:
        return
    seconds = time.perf_counter() - started
    paths = {(job, index): path for job, index, path in saved}
    written = [
        {"path": paths[(image.job, image.index)], "prompt": jobs[image.job].prompt, "seed": image.seed,
         "run_id": plan.run_id}
        for image in plan.images
    ]
    if not plan.images:
        # Nothing was generated, so no history rows carry this run id: printing it would point
        # `--again` at a run that does not exist.
        if as_json:
            echo_json(written)
        what = "the image of this command is" if plan.skipped == 1 else f"all {plan.skipped} images of this command are"
        typer.echo(f"Nothing left to make: {what} already in '{directory}' (--resume).", err=True)
        return
    if as_json:
        echo_json(written)
        return
    if workers.world > 1:
        for item in written:
            typer.echo(item["path"])
    seeds = sorted({job.seed for job in jobs})
    note = " (image i uses seed + i)" if any(job.num_images > 1 for job in jobs) else ""
    typer.echo(f"Seed: {', '.join(map(str, seeds))}{note}; run {plan.run_id[:8]} (repeat: elite gen --again {plan.run_id[:8]})", err=True)
    rate = len(plan.images) / seconds / workers.world if seconds > 0 else 0.0
    skipped = f", {plan.skipped} already there (--resume)" if plan.skipped else ""
    typer.echo(f"{counted(len(plan.images), 'image')} in {seconds:.1f} s on {counted(workers.world, 'process', 'processes')}: "
               f"{rate:.2f} images/s per process{skipped}.", err=True)


def check_prompts_fit(spec: Any, jobs: list[GenerationJob], show: bool) -> set[str]:
    """Every prompt checked against the text encoder's window before the models load (see
    `text.prompt_fit_warnings`); the warnings printed are returned so generation does not repeat them."""
    from elite_cli.text import prompt_fit_warnings

    messages = prompt_fit_warnings(spec.base_model, [job.prompt for job in jobs], [job.negative_prompt for job in jobs]) or []
    if show:
        for message in messages:
            typer.echo(f"Warning: {message}", err=True)
    return set(messages)


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


def default_batch_size(models: Any, jobs: list[GenerationJob]) -> int:
    """How many images to denoise together: what fits the GPU's free memory, 1 elsewhere."""
    import torch

    if models.device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(models.device)
    # About 1.2 GB per 512x512 image in flight (two guidance branches, fp16, attention and
    # VAE decoding included) besides the weights that are already loaded.
    pixels = max(job.width * job.height for job in jobs)
    per_image = 1.2e9 * pixels / (512 * 512) * (2 if models.dtype == torch.float32 else 1)
    return max(1, min(8, int(free * 0.8 // per_image)))


def generate_batch(generator: Any, batch: list[Any], jobs: list[GenerationJob], concepts: dict[str, Any], progress: Any,
                   reported: set[str]) -> list[Any]:
    """One batch of images; each prompt-truncation warning is printed once per command (`reported`)."""
    from elite_cli.generator import Job

    import warnings

    from elite_cli.text import PromptTruncatedWarning

    first = jobs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PromptTruncatedWarning)
        images = generator.generate_batch(
            [Job(job.prompt, image.seed, job.negative_prompt) for image, job in zip(batch, jobs)],
            concepts,
            steps=first.steps,
            guidance_scale=first.guidance_scale,
            llambda=first.llambda,
            width=first.width,
            height=first.height,
            scheduler=first.scheduler,
            progress=progress.step,
        )
    for warning in caught:
        message = str(warning.message)
        if issubclass(warning.category, PromptTruncatedWarning) and message not in reported:
            reported.add(message)
            typer.echo(f"Warning: {message}", err=True)
    return images


class GenerationProgress:
    """Rich bars on stderr (main process only): images done across all processes, and steps of
    the current batch. Other processes' progress is read from the files they have written."""

    def __init__(self, plan: Any, jobs: list[GenerationJob], directory: Path, show: bool):
        self.plan, self.jobs, self.directory, self.show = plan, jobs, directory, show
        self.progress = None

    def __enter__(self) -> "GenerationProgress":
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.progress = Progress(*columns, console=stderr_console(), transient=True)
            self.progress.__enter__()
            self.images = self.progress.add_task("images", total=len(self.plan.images))
            self.steps = self.progress.add_task("steps", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def step(self, step: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.steps, completed=step, total=total)

    def images_done(self) -> None:
        if self.progress is not None:
            from elite_cli.gen_plan import planned_path

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
    summaries = []
    for images in (open_store().list_runs(limit=None if limit == 0 else limit) if library_exists() else []):
        summaries.append(
            {
                "run_id": images[0].run_id,
                "created": images[0].created,
                "prompts": list(dict.fromkeys(image.prompt for image in images)),
                "seed": min(image.seed - image.image_index for image in images),
                "images": [as_dict(image) for image in images],
            }
        )
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
