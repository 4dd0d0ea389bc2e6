"""`elite gen` and `elite history`. Registered on `elite_cli.cli.app` when that module is imported."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, replace
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
    setting,
    stderr_console,
)
from elite_cli.errors import InputError
from elite_cli.outputs import GenerationRecord, read_png_parameters, save_png

SEED_LIMIT = 2**32  # seeds stay in the range every torch generator and A1111 accept


@dataclass
class GenerationJob:
    """The parameters of one `elite gen` call, for every prompt in it."""

    prompts: list[str]
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
        if not 0 <= self.seed < SEED_LIMIT:
            raise InputError(f"--seed must be between 0 and {SEED_LIMIT - 1}, not {self.seed}.")
        if self.guidance_scale < 0:
            raise InputError(f"--guidance must be 0 or more, not {self.guidance_scale:g}.")
        if not self.prompts or not all(prompt.strip() for prompt in self.prompts):
            raise InputError("the prompt is empty; pass text such as \"<mycat> on the beach\".")


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


def job_from_history(reference: str) -> GenerationJob:
    """The job of an earlier run: a history id, or a PNG written by `elite gen`."""
    if reference.lower().endswith(".png"):
        check_file_exists(Path(reference), "PNG")
        parameters = read_png_parameters(Path(reference))
        # A PNG is one image: repeat exactly that one (its own seed, one image).
        return GenerationJob(
            prompts=[parameters["prompt"]],
            negative_prompt=parameters["negative_prompt"],
            seed=int(parameters["seed"]),
            steps=int(parameters["steps"]),
            guidance_scale=float(parameters["guidance_scale"]),
            llambda=float(parameters["llambda"]),
            width=int(parameters["width"]),
            height=int(parameters["height"]),
            scheduler=parameters["scheduler"],
            num_images=1,
        )
    run = as_dict(open_store().get_run(reference))
    parameters = run.get("parameters", run)
    if isinstance(parameters, str):
        parameters = json.loads(parameters)
    fields = GenerationJob.__dataclass_fields__
    values = {key: parameters[key] for key in fields if key in parameters}
    if "prompts" not in values and "prompt" in parameters:
        values["prompts"] = [parameters["prompt"]]
    return GenerationJob(**values)


def load_concepts(store: Any, prompts: list[str]) -> dict[str, Any]:
    """Every concept the prompts mention, loaded before the models so a typo fails fast."""
    from elite_cli.prompts import concept_names

    concepts: dict[str, Any] = {}
    for prompt in prompts:
        for name in concept_names(prompt):
            if name not in concepts:
                concepts[name] = store.load(name)
    return concepts


def refuse_stale(concepts: dict[str, Any], models: Any) -> None:
    """Concepts encoded with other mappers than the loaded ones would give wrong images."""
    for name, concept in concepts.items():
        provenance = concept.provenance or {}
        stored = (provenance.get("global_mapper"), provenance.get("local_mapper"))
        current = (models.global_fingerprint, models.local_fingerprint)
        if stored != current:
            raise InputError(
                f"<{name}> was encoded with other mapper checkpoints than the configured ones; "
                f"run `elite reencode {name}` or pass --allow-stale."
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
    if again is not None:
        job = job_from_history(again)
    else:
        prompts = [prompt] if prompt is not None else read_prompts_file(prompts_file)
        job = GenerationJob(
            prompts=prompts,
            negative_prompt=negative,
            seed=secrets.randbelow(SEED_LIMIT) if seed is None else seed,
            steps=steps,
            guidance_scale=guidance,
            llambda=llambda,
            width=width,
            height=height,
            scheduler=scheduler,
            num_images=number,
        )
    job.check()
    directory = output_dir if output_dir is not None else Path(setting("output_dir"))
    if directory.exists() and not directory.is_dir():
        raise InputError(f"output folder '{directory}' is a file; pass a folder with -o.")
    store = open_store()
    concepts = load_concepts(store, job.prompts)

    from elite_cli.generator import SCHEDULERS, Generator

    if job.scheduler not in SCHEDULERS:  # checked here too so a typo does not wait for the models
        raise InputError(f"--scheduler '{job.scheduler}' is not supported; use one of {', '.join(SCHEDULERS)}.")
    models, _ = load_models_with_status()
    if not allow_stale:
        refuse_stale(concepts, models)
    generator = Generator(models)
    spec = models.spec if hasattr(models, "spec") else None
    written: list[dict[str, Any]] = []
    for text in job.prompts:
        wanted = {name: concepts[name] for name in concepts if f"<{name}>" in text}
        images = run_with_progress(generator, job, text, wanted)
        when = datetime.now()
        base = GenerationRecord(
            prompt=text,
            negative_prompt=job.negative_prompt,
            seed=job.seed,
            steps=job.steps,
            guidance_scale=job.guidance_scale,
            llambda=job.llambda,
            width=job.width,
            height=job.height,
            scheduler=job.scheduler,
            base_model=str(getattr(spec, "base_model", "") or setting("base_model")),
            image_encoder=str(getattr(spec, "image_encoder", "") or setting("image_encoder")),
            global_mapper=models.global_fingerprint,
            local_mapper=models.local_fingerprint,
            concepts={name: str(getattr(concept, "concept_id", "") or concept.provenance.get("id", "")) for name, concept in wanted.items()},
            elite_version=__version__,
        )
        paths = []
        for index, image in enumerate(images):
            record = replace(base, seed=job.seed + index, index=index)
            path = save_png(image, directory, record, when)
            paths.append(path)
            if not as_json:
                typer.echo(str(path))
        run_id = record_run(store, job, text, paths)
        written.extend(
            {"path": str(path), "prompt": text, "seed": job.seed + index, "run_id": run_id}
            for index, path in enumerate(paths)
        )
    if as_json:
        echo_json(written)
    else:
        typer.echo(f"Seed: {job.seed}" + (f" (image i uses {job.seed} + i)" if job.num_images > 1 else ""), err=True)


def run_with_progress(generator: Any, job: GenerationJob, prompt: str, concepts: dict[str, Any]) -> list[Any]:
    """One prompt's images, with a rich progress bar over the denoising steps on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    label = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        # All images of a prompt are denoised together, so the bar counts steps, not images.
        task = progress.add_task(label, total=job.steps)

        def advance(step: int, total: int) -> None:
            progress.update(task, completed=step, total=total)

        return generator.generate(
            prompt,
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


def record_run(store: Any, job: GenerationJob, prompt: str, paths: list[Path]) -> Any:
    """Add one prompt's run to the library's generation history; returns its id."""
    parameters = asdict(replace(job, prompts=[prompt]))
    parameters["prompt"] = prompt
    return store.record_generation(parameters=parameters, outputs=[str(path) for path in paths])


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", "-l", help="How many runs, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List earlier `elite gen` runs; repeat one with `elite gen --again ID`.

    Example: [bold]elite history --limit 5[/bold]
    """
    runs = [as_dict(run) for run in open_store().list_history(limit=limit)]
    if as_json:
        echo_json(runs)
        return
    if not runs:
        typer.echo("No runs yet; generate with `elite gen \"<name> ...\"`.")
        return
    rows = []
    for run in runs:
        parameters = run.get("parameters") or {}
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        outputs = run.get("outputs") or []
        rows.append(
            [
                run.get("id"),
                run.get("created", run.get("when")),
                parameters.get("prompt", run.get("prompt")),
                parameters.get("seed", run.get("seed")),
                len(outputs) if isinstance(outputs, list) else outputs,
            ]
        )
    print_rows(["id", "when", "prompt", "seed", "images"], rows)
