"""Running a generation call: plan, batches, saved PNGs and their history rows.

`run_generation` is what `Session.generate` / `Session.repeat` (elite_cli/api.py) do once the
jobs are known: it checks them, loads the concepts and then the models, plans every image
(plan.py), denoises this process's batches, saves each PNG and records its history row
right after it. It never prints: warnings, steps and saved images go to a `GenerationListener`.
Under `accelerate launch`/`torchrun` (workers.py) every process runs it and each makes its share.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from elite_cli import __version__
from elite_cli.errors import InputError
from elite_cli.generation.jobs import GenerationJob, load_concepts, model_changes
from elite_cli.common.outputs import GenerationRecord, save_png

if TYPE_CHECKING:
    from PIL import Image

    from elite_cli.generation.plan import GenerationPlan
    from elite_cli.library import ConceptStore
    from elite_cli.model.loading import Models, ModelSpec


class GenerationWarning(UserWarning):
    """Something the user should know about a generation that still goes ahead (a prompt cut to
    the text encoder's window, a repeated run made with other models)."""


class GenerationListener:
    """What a front end hears while `run_generation` works; every method does nothing here.

    Subclass it (the CLI draws progress bars), or pass plain callbacks to `Session.generate`.
    Methods run in the process that generates; under several processes, `planned` and the
    warnings about the whole call come only on the main one.
    """

    def warning(self, message: str) -> None:
        """A one-sentence warning (no 'Warning: ' prefix)."""

    def precision(self, line: str) -> None:
        """The models are loaded: what they compute in and why, in one line such as 'bfloat16 (auto:
        this CPU computes bfloat16 natively (AVX512-BF16); ...)' (main process only)."""

    def planned(self, plan: "GenerationPlan", jobs: list[GenerationJob], directory: Path, processes: int,
                is_main: bool) -> None:
        """Every image is named and batched; the first batch starts next."""

    def step(self, step: int, total: int) -> None:
        """Denoising step `step` of `total` of the current batch is done."""

    def image_saved(self, image: "GeneratedImage") -> None:
        """One PNG and its history row are written."""

    def batch_done(self) -> None:
        """A batch's images are all saved."""


class CallbackListener(GenerationListener):
    """A listener from plain callables; warnings without a callback go to Python's `warnings`."""

    def __init__(self, progress: Callable[[int, int], None] | None = None,
                 on_image: Callable[["GeneratedImage"], None] | None = None,
                 on_warning: Callable[[str], None] | None = None):
        self.progress, self.on_image, self.on_warning = progress, on_image, on_warning

    def warning(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)
        else:
            warnings.warn(message, GenerationWarning, stacklevel=4)

    def step(self, step: int, total: int) -> None:
        if self.progress is not None:
            self.progress(step, total)

    def image_saved(self, image: "GeneratedImage") -> None:
        if self.on_image is not None:
            self.on_image(image)


@dataclass
class GeneratedImage:
    """One saved PNG of a call, as its history row describes it."""

    path: Path
    prompt: str
    negative_prompt: str
    seed: int
    index: int  # which image of its prompt: seed = the prompt's first seed + index
    job: int  # which prompt (job) of the call
    run_id: str
    # steps, guidance_scale, llambda, width, height, scheduler, the models, job and num_images.
    parameters: dict[str, Any] = field(default_factory=dict)
    concept_ids: dict[str, str] = field(default_factory=dict)  # {name in the prompt: library id}
    seconds: float = 0.0  # this image's share of its batch's time

    def open(self) -> "Image.Image":
        """The image, loaded from its PNG."""
        from PIL import Image

        with Image.open(self.path) as image:
            image.load()
            return image

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass
class GenerationResult:
    """What a call made. On the main process `images` holds every process's images, in plan order."""

    run_id: str
    images: list[GeneratedImage]
    jobs: list[GenerationJob]
    output_dir: Path
    skipped: int = 0  # images already in output_dir (resume)
    seconds: float = 0.0  # from planning to the last image
    processes: int = 1
    is_main: bool = True

    @property
    def paths(self) -> list[Path]:
        return [image.path for image in self.images]

    @property
    def seeds(self) -> list[int]:
        """The first seed of each distinct job (image i of a job uses seed + i)."""
        return sorted({job.seed for job in self.jobs})


def check_run_options(*, batch_size: int | None, resume: bool, seed_known: bool) -> None:
    """Options that cannot work whatever the prompts; checked before anything is opened or launched."""
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}.")
    if resume and not seed_known:
        raise InputError("--resume needs the seed of the run to resume; pass the same --seed (or use --again RUN).")


def run_generation(store: "ConceptStore", jobs: list[GenerationJob], directory: Path, spec: "ModelSpec",
                   load_models: Callable[["ModelSpec"], "Models"], listener: GenerationListener, *,
                   again: str | None = None, batch_size: int | None = None, resume: bool = False,
                   allow_stale: bool = False,
                   fetch_models: Callable[["ModelSpec", bool], None] | None = None) -> GenerationResult:
    """Make every image of `jobs` into `directory` (see the module docstring). `again` names the run
    or PNG the jobs repeat (for messages). fetch_models(spec, is_main_process) downloads what the
    models lack before anything reads them. Raises InputError/ModelError/LibraryError before any image."""
    from elite_cli.generation.plan import plan_generation
    from elite_cli.model.generator import Generator
    from elite_cli.common.outputs import check_output_folder
    from elite_cli.generation.workers import join_workers

    for job in jobs:
        job.check()
        if again is not None and job.mode is not None:
            job.mode.check_sources_unchanged(again)
    check_output_folder(directory)
    concepts = load_concepts(store, jobs, again)

    workers = join_workers(spec.device)
    if workers.world > 1:
        # One run, one set of source pictures: every process draws from the pictures the main
        # process recorded (paths and sha256, as each PNG and history row names them), each reading
        # them itself; prepare_modes refuses a picture whose bytes differ from that record.
        main_modes = workers.share([job.mode for job in jobs])
        jobs = [dataclasses.replace(job, mode=mode) for job, mode in zip(jobs, main_modes)]
    if workers.device is not None:
        spec = dataclasses.replace(spec, device=workers.device)
    if fetch_models is not None:  # the first run downloads the models
        fetch_models(spec, workers.is_main)
    # Prompts that do not fit the text encoder fail (or warn) now, not after some images exist.
    reported_warnings = check_prompts_fit(spec, jobs, listener if workers.is_main else None)
    models = load_models(spec)
    if not allow_stale:
        from elite_cli.model.concept import refuse_stale

        refuse_stale(((name, record.name, concept) for name, (record, concept) in concepts.items()),
                     models.global_fingerprint, models.local_fingerprint)
    if workers.is_main:
        from elite_cli.model.concept import outdated_preprocessing_warnings

        for line in outdated_preprocessing_warnings((name, record.name, concept)
                                                    for name, (record, concept) in concepts.items()):
            listener.warning(line.removeprefix("Warning: "))
    generator = Generator(models)
    # Pictures, regions and ControlNets are read and loaded before the first image, so that a bad
    # one fails with nothing written.
    prepare_modes(generator, jobs)
    model_parameters = {
        "base_model": models.spec.base_model,
        "image_encoder": models.spec.image_encoder,
        "global_mapper": models.global_fingerprint,
        "local_mapper": models.local_fingerprint,
        "elite_version": __version__,
        # The same run in another precision is nearly, not exactly, the same picture (--again says so).
        "dtype": models.precision.name,
    }
    if again is not None and workers.is_main:
        changed = model_changes(jobs, model_parameters)
        if changed:
            listener.warning(f"{again} was made with other models, so the images may differ: {'; '.join(changed)}.")
    started = time.perf_counter()
    # Every process must cut the same batches: take the size that fits the fullest GPU.
    agreed_batch_size = workers.smallest(batch_size or default_batch_size(models, jobs))
    plan = None
    if workers.is_main:
        plan = plan_generation(jobs, directory, store.new_run_id(), agreed_batch_size, model_parameters, resume=resume)
    plan = workers.share(plan)
    if workers.is_main and plan.batches:  # said once there is an image to make
        listener.precision(models.precision.line())
    listener.planned(plan, jobs, directory, workers.world, workers.is_main)

    # The images really written: a name reserved in the plan can still be taken by another
    # program before we save, and save_png then picks the next free suffix.
    saved: list[GeneratedImage] = []
    for batch in plan.share(workers.rank, workers.world):
        saved += make_batch(store, generator, plan, batch, jobs, concepts, model_parameters, directory, listener,
                            reported_warnings)
        listener.batch_done()
    saved = workers.collect(saved)
    by_image = {(image.job, image.index): image for image in saved}
    return GenerationResult(
        run_id=plan.run_id, images=[by_image[(image.job, image.index)] for image in plan.images] if workers.is_main else saved,
        jobs=jobs, output_dir=directory, skipped=plan.skipped, seconds=time.perf_counter() - started,
        processes=workers.world, is_main=workers.is_main,
    )


def make_batch(store: Any, generator: Any, plan: "GenerationPlan", batch: list[Any], jobs: list[GenerationJob],
               concepts: dict[str, tuple[Any, Any]], model_parameters: dict[str, str], directory: Path,
               listener: GenerationListener, reported_warnings: set[str]) -> list[GeneratedImage]:
    """Denoise one batch, then save each image and record its history row right after its file."""
    from elite_cli.model.prompts import concept_names

    batch_jobs = [jobs[image.job] for image in batch]
    wanted = {name: concepts[name] for job in batch_jobs for name in concept_names(job.prompt)}
    batch_started = time.perf_counter()
    images = generate_batch(generator, batch, batch_jobs, {name: concept for name, (_, concept) in wanted.items()},
                            listener, reported_warnings)
    seconds_per_image = (time.perf_counter() - batch_started) / len(images)
    saved = []
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
        parameters = {**job.settings(), **model_parameters, "job": planned.job, "num_images": job.num_images}
        # One history row per saved image, right after its file: an interruption leaves
        # complete files with complete rows. SQLite's WAL lets every process write.
        store.record_generation(
            run_id=plan.run_id,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            seed=planned.seed,
            image_index=planned.index,
            parameters=parameters,
            concept_ids=concept_ids,
            output_path=path.resolve(),
            duration_s=round(seconds_per_image, 3),
        )
        generated = GeneratedImage(path=path, prompt=job.prompt, negative_prompt=job.negative_prompt, seed=planned.seed,
                                   index=planned.index, job=planned.job, run_id=plan.run_id, parameters=parameters,
                                   concept_ids=concept_ids, seconds=round(seconds_per_image, 3))
        saved.append(generated)
        listener.image_saved(generated)
    return saved


def check_prompts_fit(spec: Any, jobs: list[GenerationJob], listener: GenerationListener | None) -> set[str]:
    """Every prompt checked against the text encoder's window before the models load (see
    `text.prompt_fit_warnings`); the warnings told (none without a listener) are returned so that
    generation does not repeat them."""
    from elite_cli.model.text import prompt_fit_warnings

    messages = prompt_fit_warnings(spec.base_model, [job.prompt for job in jobs], [job.negative_prompt for job in jobs]) or []
    if listener is not None:
        for message in messages:
            listener.warning(message)
    return set(messages)


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


def prepare_modes(generator: Any, jobs: list[GenerationJob]) -> dict[tuple, Any]:
    """{(mode, width, height): PreparedMode} for the jobs that start from pictures, made once per
    call (kept on the generator)."""
    prepared = generator.__dict__.setdefault("prepared_modes", {})
    for job in jobs:
        key = (job.mode, job.width, job.height)
        if job.mode is not None and key not in prepared:
            from elite_cli.model.modes import prepare_mode

            prepared[key] = prepare_mode(job.mode, generator.models, job.width, job.height)
    return prepared


def generate_batch(generator: Any, batch: list[Any], jobs: list[GenerationJob], concepts: dict[str, Any],
                   listener: GenerationListener, reported: set[str]) -> list[Any]:
    """One batch of images; each prompt-truncation warning is told once per call (`reported`)."""
    from elite_cli.model.generator import Job
    from elite_cli.model.text import PromptTruncatedWarning

    first = jobs[0]
    # The batch's jobs share every setting, their mode included (plan.cut_batches).
    prepared = prepare_modes(generator, [first])[(first.mode, first.width, first.height)] if first.mode else None
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
            progress=listener.step,
            mode=prepared,
        )
    for warning in caught:
        message = str(warning.message)
        if issubclass(warning.category, PromptTruncatedWarning) and message not in reported:
            reported.add(message)
            listener.warning(message)
    return images
