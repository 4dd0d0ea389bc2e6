"""`elite gen` and `elite history`. Registered on `elite_cli.cli.app` when that module is imported."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
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
    load_models_with_status,
    open_store,
    print_rows,
    short_time,
    setting,
    stderr_console,
)
from elite_cli.errors import InputError
from elite_cli.outputs import GenerationRecord, read_png_parameters, save_png

SEED_LIMIT = 2**32  # seeds stay in the range every torch generator and A1111 accept


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

    def check(self) -> None:
        """Fail before any model loads if a parameter cannot work."""
        for flag, value in (("--width", self.width), ("--height", self.height)):
            if value < 8 or value % 8:
                raise InputError(f"{flag} must be a positive multiple of 8 (e.g. 512), not {value}.")
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1, not {self.steps}.")
        if self.num_images < 1:
            raise InputError(f"-n must be at least 1, not {self.num_images}.")
        if not 0 <= self.seed or self.seed + self.num_images > SEED_LIMIT:
            raise InputError(f"--seed must be between 0 and {SEED_LIMIT - self.num_images}, not {self.seed}.")
        if self.guidance_scale < 0:
            raise InputError(f"--guidance must be 0 or more, not {self.guidance_scale:g}.")
        if not self.prompt.strip():
            raise InputError('the prompt is empty; pass text such as "<mycat> on the beach".')

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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"prompts file '{path}' is not UTF-8 text; save it as UTF-8, one prompt per line.") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"prompts file '{path}' holds no prompts; write one prompt per line.")
    return prompts


def jobs_from_png(path: Path) -> list[GenerationJob]:
    """A PNG written by `elite gen` describes one image: repeat exactly that one."""
    check_file_exists(path, "PNG")
    parameters = read_png_parameters(path)
    return [
        GenerationJob(
            prompt=parameters["prompt"],
            negative_prompt=parameters["negative_prompt"],
            seed=int(parameters["seed"]),
            num_images=1,
            **{key: parameters[key] for key in GenerationJob("").settings()},
        )
    ]


def jobs_from_history(store: Any, run_id: str) -> list[GenerationJob]:
    """The jobs of an earlier run, from its history rows (one row per image)."""
    jobs: dict[tuple, GenerationJob] = {}
    for entry in store.get_run(run_id):
        first_seed = entry.seed - entry.image_index
        settings = {key: entry.parameters[key] for key in GenerationJob("").settings() if key in entry.parameters}
        key = (entry.prompt, entry.negative_prompt, first_seed, tuple(sorted(settings.items())))
        if key in jobs:
            jobs[key].num_images = max(jobs[key].num_images, entry.image_index + 1)
        else:
            jobs[key] = GenerationJob(
                prompt=entry.prompt,
                negative_prompt=entry.negative_prompt,
                seed=first_seed,
                num_images=entry.image_index + 1,
                **settings,
            )
    return list(jobs.values())


def load_concepts(store: Any, prompts: list[str]) -> dict[str, tuple[Any, Any]]:
    """{name: (record, concept)} for every concept the prompts mention, loaded before the models
    so that a typo fails fast."""
    from elite_cli.prompts import concept_names

    concepts: dict[str, tuple[Any, Any]] = {}
    for prompt in prompts:
        for name in concept_names(prompt):
            if name not in concepts:
                concepts[name] = (store.get(name), store.load(name))
    return concepts


def refuse_stale(concepts: dict[str, tuple[Any, Any]], models: Any) -> None:
    """Concepts encoded with other mappers than the loaded ones would give wrong images."""
    for name, (record, _) in concepts.items():
        if not record.mapper_matches(models.global_fingerprint, models.local_fingerprint):
            raise InputError(
                f"<{name}> was encoded with other mapper checkpoints than the configured ones; "
                f"run `elite reencode {record.name}` or pass --allow-stale."
            )


@app.command()
def gen(
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
        float, typer.Option("--lambda", help="Local detail strength: higher = more faithful, less editable.")
    ] = 0.8,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    width: Annotated[int, typer.Option(help="Image width, a multiple of 8.")] = 512,
    height: Annotated[int, typer.Option(help="Image height, a multiple of 8.")] = 512,
    scheduler: Annotated[str, typer.Option(help="Sampler: lms (as in the ELITE paper), ddim, pndm, euler or dpm++.")] = "lms",
    output_dir: Annotated[
        Optional[Path],
        typer.Option("--output-dir", "-o", help="Folder for the PNGs (default: ./elite-out, or config).", show_default=False),
    ] = None,
    prompts_file: Annotated[
        Optional[Path], typer.Option("--prompts", help="File with one prompt per line.", show_default=False)
    ] = None,
    again: Annotated[
        Optional[str], typer.Option("--again", help="Repeat a run: history id or a PNG from elite gen.", show_default=False)
    ] = None,
    allow_stale: Annotated[
        bool, typer.Option("--allow-stale", help="Use concepts encoded with other mapper checkpoints.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate images from a prompt that names concepts as <name>.

    Files are named <time>-<prompt>-<seed>.png and never overwritten; each PNG holds its full parameters (A1111 `parameters` text and an `elite` JSON chunk). Image i uses seed + i.

    Example: [bold]elite gen "<mycat> on the beach" -n 4 --seed 7[/bold]
    """
    sources = [value for value in (prompt, prompts_file, again) if value is not None]
    if len(sources) != 1:
        raise InputError("give exactly one of PROMPT, --prompts FILE or --again ID.")
    store = open_store()
    if again is not None:
        jobs = jobs_from_png(Path(again)) if again.lower().endswith(".png") else jobs_from_history(store, again)
    else:
        prompts = [prompt] if prompt is not None else read_prompts_file(prompts_file)
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
    if directory.exists() and not directory.is_dir():
        raise InputError(f"output folder '{directory}' is a file; pass a folder with -o.")
    concepts = load_concepts(store, [job.prompt for job in jobs])

    from elite_cli.generator import SCHEDULERS, Generator

    for job in jobs:  # checked here too so that a typo does not wait for the models
        if job.scheduler not in SCHEDULERS:
            raise InputError(f"--scheduler '{job.scheduler}' is not supported; use one of {', '.join(SCHEDULERS)}.")
    models, _ = load_models_with_status()
    if not allow_stale:
        refuse_stale(concepts, models)
    generator = Generator(models)
    run_id = store.new_run_id()
    model_parameters = {
        "base_model": models.spec.base_model,
        "image_encoder": models.spec.image_encoder,
        "global_mapper": models.global_fingerprint,
        "local_mapper": models.local_fingerprint,
        "elite_version": __version__,
    }
    from elite_cli.prompts import concept_names

    written: list[dict[str, Any]] = []
    for job in jobs:
        wanted = {name: concepts[name] for name in concept_names(job.prompt)}
        concept_ids = {name: record.id for name, (record, _) in wanted.items()}
        started = time.perf_counter()
        images = run_with_progress(generator, job, {name: concept for name, (_, concept) in wanted.items()})
        seconds_per_image = (time.perf_counter() - started) / len(images)
        when = datetime.now()
        for index, image in enumerate(images):
            record = GenerationRecord(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                seed=job.seed + index,
                index=index,
                concepts=concept_ids,
                run_id=run_id,
                **job.settings(),
                **model_parameters,
            )
            path = save_png(image, directory, record, when)
            # One history row per saved image, right after its file: an interruption leaves
            # complete files with complete rows.
            store.record_generation(
                run_id=run_id,
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                seed=job.seed + index,
                image_index=index,
                parameters={**job.settings(), **model_parameters},
                concept_ids=concept_ids,
                output_path=path.resolve(),
                duration_s=round(seconds_per_image, 3),
            )
            written.append({"path": str(path), "prompt": job.prompt, "seed": job.seed + index, "run_id": run_id})
            if not as_json:
                typer.echo(str(path))
    if as_json:
        echo_json(written)
    else:
        seeds = sorted({job.seed for job in jobs})
        note = " (image i uses seed + i)" if any(job.num_images > 1 for job in jobs) else ""
        typer.echo(f"Seed: {', '.join(map(str, seeds))}{note}; run {run_id[:8]} (repeat: elite gen --again {run_id[:8]})", err=True)


def run_with_progress(generator: Any, job: GenerationJob, concepts: dict[str, Any]) -> list[Any]:
    """One prompt's images, with a rich progress bar over the denoising steps on stderr."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    label = job.prompt if len(job.prompt) <= 40 else job.prompt[:39] + "…"
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        # All images of a prompt are denoised together, so the bar counts steps, not images.
        task = progress.add_task(escape(label), total=job.steps)

        def advance(step: int, total: int) -> None:
            progress.update(task, completed=step, total=total)

        return generator.generate(
            job.prompt,
            concepts=concepts,
            negative_prompt=job.negative_prompt,
            seed=job.seed,
            steps=job.steps,
            guidance_scale=job.guidance_scale,
            llambda=job.llambda,
            width=job.width,
            height=job.height,
            num_images=job.num_images,
            scheduler=job.scheduler,
            progress=advance,
        )


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", "-l", help="How many images to look back over, newest first (0: all).")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List earlier `elite gen` runs; repeat one with `elite gen --again RUN`.

    Example: [bold]elite history --limit 5[/bold]
    """
    entries = open_store().list_history(limit=None if limit == 0 else limit)
    # One item per run (newest first), gathered from the per-image rows.
    runs: dict[str, list[Any]] = {}
    for entry in entries:
        runs.setdefault(entry.run_id, []).append(entry)
    summaries = []
    for run_id, images in runs.items():
        images.sort(key=lambda image: image.id)
        summaries.append(
            {
                "run_id": run_id,
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
    rows = [
        [run["run_id"][:8], short_time(run["created"]), " | ".join(run["prompts"]), run["seed"], len(run["images"])]
        for run in summaries
    ]
    print_rows(["run", "when", "prompt", "seed", "images"], rows)
