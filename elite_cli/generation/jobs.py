"""The jobs of one generation call, before any model loads: what each prompt asks for
(`GenerationJob`), where a call's jobs come from (a prompt, a prompts file, a PNG or a history run
written by an earlier call), and the concepts they name. No torch here.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from elite_cli.errors import InputError
from elite_cli.model.generation_limits import check_image_settings
from elite_cli.model.mode_options import ImageMode
from elite_cli.common.outputs import code_keys, read_png_parameters
from elite_cli.common.paths import check_file_exists


@dataclass(kw_only=True)
class ImageSettings:
    """How every image of a prompt is made: the settings (and defaults) that `elite gen`'s jobs and
    `elite eval` share."""

    steps: int = 50
    guidance_scale: float = 5.0
    llambda: float = 0.8
    width: int = 512
    height: int = 512
    scheduler: str = "lms"

    def check_image_settings(self, seed: int, num_images: int) -> None:
        """Fail before any model loads if a setting cannot work."""
        check_image_settings(width=self.width, height=self.height, steps=self.steps, guidance_scale=self.guidance_scale,
                             llambda=self.llambda, seed=seed, num_images=num_images, scheduler=self.scheduler)


@dataclass
class GenerationJob(ImageSettings):
    """One prompt's images in an `elite gen` call; image i uses seed + i."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    # The image settings (ImageSettings) and what follows are keyword-only.
    _: KW_ONLY
    num_images: int = 1
    # {name in the prompt: library id} when repeating a run: the concept it really used, even
    # if that name was renamed or given to another concept since.
    concept_ids: dict[str, str] = field(default_factory=dict)
    # The models a repeated run recorded (base_model, image_encoder, mapper fingerprints).
    recorded_models: dict[str, str] = field(default_factory=dict)
    # Starting from the user's pictures (img2img, inpainting, ControlNet); None: from noise.
    mode: ImageMode | None = None

    def check(self) -> None:
        """Fail before any model loads if a parameter cannot work."""
        from elite_cli.model.mode_options import check_mode_fits
        from elite_cli.model.prompts import check_placeholders

        self.check_image_settings(self.seed, self.num_images)
        check_mode_fits(self.mode, self.steps)
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
            # Only when set: a text-to-image run's rows and PNGs stay as they were.
            **({"mode": self.mode.to_dict()} if self.mode is not None else {}),
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
              "local_mapper": "local mapper", "dtype": "precision"}


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
                mode=ImageMode.from_dict(parameters.get("mode")),
            )
        ]
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise InputError(f"'{path}' has a damaged elite parameters chunk ({error}); pass a PNG written by `elite gen`.") from None


def jobs_from_history(store: Any, run_id: str) -> list[GenerationJob]:
    """The jobs of an earlier run, from its history rows (one row per image), in their order.

    Rows record their job's number and image count, so a run that was interrupted before some
    images were made is rebuilt whole (and `--again RUN --resume` makes what is missing).
    """
    jobs: dict[tuple, tuple[int, GenerationJob]] = {}
    for entry in store.get_run(run_id):
        first_seed = entry.seed - entry.image_index
        parameters = code_keys(entry.parameters)  # `lambda` (newer rows) or `llambda` (older ones)
        settings = {key: parameters[key] for key in GenerationJob("").settings() if key in parameters}
        number = int(entry.parameters.get("job", len(jobs)))
        settings.pop("mode", None)  # rebuilt below from the row's own record
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
                mode=ImageMode.from_dict(entry.parameters.get("mode")),
                **settings,
            )
            jobs[key] = (number, job)
    return [job for _, job in sorted(jobs.values(), key=lambda item: item[0])]


def load_concepts(store: Any, jobs: list[GenerationJob], again: str | None = None) -> dict[str, tuple[Any, Any]]:
    """{name: (record, concept)} for every concept the prompts mention, loaded before the models
    so that a typo fails fast. A repeated run's concepts are found by the ids it recorded."""
    from elite_cli.errors import ConceptNotFound
    from elite_cli.model.prompts import concept_names

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
                    from elite_cli.model.text import quoted_start

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
