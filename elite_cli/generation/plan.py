"""Planning an `elite gen` job list before any image is made.

Every image of a call (prompt, seed, index) gets its file name and its batch up front, on one
process. Batches are cut from the whole ordered list and only then dealt out to processes, so an
image is always denoised in the same batch, with the same neighbours, whatever the number of
processes: its pixels do not depend on how the work was split. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from elite_cli.common.outputs import ELITE_CHUNK, code_keys, image_file_name

# The settings that make two images the same image (with prompt, negative prompt and seed).
SETTING_KEYS = ("steps", "guidance_scale", "llambda", "width", "height", "scheduler")
MODEL_KEYS = ("base_model", "global_mapper", "local_mapper")


@dataclass(frozen=True)
class PlannedImage:
    job: int  # index of the prompt's job in the call
    index: int  # image index within that job; seed = job seed + index
    seed: int
    suffix: int  # file-name suffix reserved for it (0: none)


@dataclass
class GenerationPlan:
    run_id: str
    when: datetime  # the time stamp in every file name of the run
    batch_size: int
    images: list[PlannedImage]
    skipped: int = 0  # images already written by an earlier run (--resume)
    batches: list[list[PlannedImage]] = field(default_factory=list)

    def share(self, rank: int, world: int) -> list[list[PlannedImage]]:
        """The batches process `rank` of `world` makes: every world-th batch."""
        return self.batches[rank::world]


def identity(prompt: str, negative_prompt: str, seed: int, settings: dict[str, Any], models: dict[str, Any]) -> str:
    """What makes an image the same image: used by --resume to recognise finished work."""
    values = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": int(seed)}
    values.update({key: settings[key] for key in SETTING_KEYS})
    values["mode"] = settings.get("mode")  # img2img/inpainting/ControlNet options; None for text-to-image
    values.update({key: models.get(key, "") for key in MODEL_KEYS})
    return json.dumps(values, sort_keys=True)


def finished_images(directory: Path) -> set[str]:
    """Identities of the PNGs `elite gen` already wrote in `directory` (unreadable files are ignored)."""
    from PIL import Image

    found: set[str] = set()
    if not directory.is_dir():
        return found
    for path in directory.glob("*.png"):
        if path.name.startswith("."):
            continue  # a save's temporary file (`.elite-partial-*`): maybe cut short by a kill
        try:
            with Image.open(path) as image:
                image.load()  # a truncated file fails here, and its image is made again
                record = json.loads(image.info.get(ELITE_CHUNK, "null"))
        except (OSError, ValueError, SyntaxError):
            continue
        if isinstance(record, dict):
            record = code_keys(record)
            try:
                found.add(identity(record["prompt"], record["negative_prompt"], record["seed"], record, record))
            except KeyError:
                continue
    return found


def plan_generation(jobs: Sequence[Any], directory: Path, run_id: str, batch_size: int, models: dict[str, Any],
                    resume: bool = False, when: datetime | None = None) -> GenerationPlan:
    """Name and batch every image of `jobs` (objects with prompt, negative_prompt, seed, num_images, settings())."""
    when = when or datetime.now()
    if resume:
        from elite_cli.common.outputs import remove_abandoned_partials

        remove_abandoned_partials(directory)  # what the killed run was saving is made again
    done = finished_images(directory) if resume else set()
    taken = {path.name for path in directory.glob("*.png")} if directory.is_dir() else set()
    images: list[PlannedImage] = []
    skipped = 0
    for number, job in enumerate(jobs):
        for index in range(job.num_images):
            seed = job.seed + index
            if identity(job.prompt, job.negative_prompt, seed, job.settings(), models) in done:
                skipped += 1
                continue
            suffix = 0
            while image_file_name(job.prompt, seed, when, suffix) in taken:
                suffix += 1
            taken.add(image_file_name(job.prompt, seed, when, suffix))
            images.append(PlannedImage(number, index, seed, suffix))
    plan = GenerationPlan(run_id=run_id, when=when, batch_size=batch_size, images=images, skipped=skipped)
    plan.batches = cut_batches(images, jobs, batch_size)
    return plan


def cut_batches(images: Iterable[PlannedImage], jobs: Sequence[Any], batch_size: int) -> list[list[PlannedImage]]:
    """Consecutive images sharing every denoising setting, at most batch_size to a batch."""
    batches: list[list[PlannedImage]] = []
    for image in images:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size and jobs[current[0].job].settings() == jobs[image.job].settings():
            current.append(image)
        else:
            batches.append([image])
    return batches


def planned_path(plan: GenerationPlan, jobs: Sequence[Any], directory: Path, image: PlannedImage) -> Path:
    return directory / image_file_name(jobs[image.job].prompt, image.seed, plan.when, image.suffix)
