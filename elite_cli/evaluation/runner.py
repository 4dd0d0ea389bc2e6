"""`elite eval`'s core: generate each concept's prompts, score every image, write images and sheets.

Prompts are templates where `{}` stands for the subject ("a {} on the beach"). For generation
`{}` becomes the concept's placeholder (`a <mycat> on the beach`); for CLIP-T it becomes the
concept's class word when one is known (`a cat on the beach`, DreamBench's convention: the
prompt says what the image should show) and is removed otherwise (`a on the beach`, Textual
Inversion's convention of omitting the pseudo-word). The report records which text was scored.

Image i of a prompt uses seed + i, exactly as `elite gen` does, so every image can be repeated
with `elite gen "<prompt>" --seed S`. Scores are per image; a concept's summary pools its
images, and the overall summary pools every image of every concept (equal to the mean of the
concept means when every concept has the same prompts, as on DreamBench).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from PIL import Image, PngImagePlugin

from elite_cli import __version__
from elite_cli.model.concept import Concept
from elite_cli.errors import InputError
from elite_cli.common.outputs import user_keys
from elite_cli.evaluation.contact_sheet import SheetRow, contact_sheet, fit
from elite_cli.evaluation.dreambench import dreambench_prompts
from elite_cli.generation.jobs import ImageSettings
from elite_cli.evaluation.metrics import MetricModels, Summary, mean_cosine_to_references, paired_cosine, summarize

if TYPE_CHECKING:
    from elite_cli.model.loading import Models

REPORT_FORMAT = "elite-eval/1"
SUBJECT = "{}"
METRICS = ("clip_t", "clip_i", "dino")
METRIC_LABELS = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino": "DINO"}
# Contact sheets show this many px per image; full-size images are on disk beside them.
SHEET_TILE = 256

Progress = Callable[[int, int, str], None]


@dataclass
class Subject:
    """One concept to evaluate: its tensors, the picture it was encoded from, and its class word."""

    name: str
    concept: Concept
    source_image: Path
    class_word: str | None = None


@dataclass
class EvalSettings(ImageSettings):
    """What to generate. `prompts` are templates with `{}`; None means the 25 DreamBench ones.
    The image settings (steps, guidance_scale, llambda, width, height, scheduler) are `elite gen`'s."""

    prompts: tuple[str, ...] | None = None
    num_images: int = 4
    seed: int = 0
    negative_prompt: str = ""
    # Images denoised together (one UNet batch); 4 = one DreamBench prompt at a time.
    batch_size: int = 4

    def check(self) -> None:
        """Fail before any model loads (and before the output folder is made) if a setting cannot work."""
        self.check_image_settings(self.seed, self.num_images)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {self.batch_size}.")
        if self.prompts is not None:
            if not self.prompts:
                raise InputError("no prompts to evaluate; pass --prompts FILE (one template with {} a line) or --dreambench.")
            for template in self.prompts:
                check_template(template)


# ---- prompts ---------------------------------------------------------------------------------

def check_template(template: str) -> None:
    from elite_cli.model.prompts import check_placeholders, concept_names

    if template.count(SUBJECT) != 1:
        raise InputError(f"prompt template {template!r} must hold exactly one {{}} where the concept goes, e.g. 'a {{}} on the beach'.")
    check_placeholders(template)
    others = concept_names(template)
    if others:
        # Each template measures one concept; another concept's <name> would reach CLIP-T as text.
        raise InputError(f"prompt template {template!r} names <{others[0]}>; a template holds only {{}} for the concept "
                         "being evaluated, e.g. 'a {} on the beach' (evaluate that concept by naming it too).")


def read_prompt_templates(path: Path) -> tuple[str, ...]:
    """One template a line; blank lines and lines starting with '#' are skipped."""
    if path.is_dir():
        raise InputError(f"prompts file '{path}' is a folder; pass a text file with one template such as 'a {{}} on the beach' a line.")
    if not path.is_file():
        raise InputError(f"prompts file '{path}' does not exist; pass a text file with one template such as 'a {{}} on the beach' a line.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad) is not template text
    except UnicodeDecodeError:
        raise InputError(f"prompts file '{path}' is not UTF-8 text; save it as UTF-8, one template a line.") from None
    templates = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not templates:
        raise InputError(f"prompts file '{path}' holds no prompts; write one template such as 'a {{}} on the beach' a line.")
    for template in templates:
        check_template(template)
    return templates


def templates_for(subject: Subject, settings: EvalSettings) -> tuple[str, ...]:
    return settings.prompts if settings.prompts is not None else dreambench_prompts(subject.class_word)


def generation_prompt(template: str, name: str) -> str:
    return template.replace(SUBJECT, f"<{name}>")


def clip_t_text(template: str, class_word: str | None) -> str:
    """The text CLIP-T compares with: class word in place of the subject, or the subject removed."""
    text = template.replace(SUBJECT, class_word.strip() if class_word else "")
    return re.sub(r"\s+", " ", text).strip()


# ---- results ---------------------------------------------------------------------------------

@dataclass
class ImageScore:
    prompt: str  # as generated, with the <placeholder>
    clip_t_text: str  # as scored
    seed: int
    path: str
    clip_t: float
    clip_i: float
    dino: float


@dataclass
class ConceptResult:
    name: str
    class_word: str | None
    source_image: str
    contact_sheet: str = ""
    images: list[ImageScore] = field(default_factory=list)

    def summary(self, metric: str) -> Summary:
        return summarize([getattr(image, metric) for image in self.images])

    def per_prompt(self) -> list[dict]:
        """Summaries per prompt, in prompt order: which prompts a concept fails is the useful part."""
        prompts = list(dict.fromkeys(image.prompt for image in self.images))
        return [
            {"prompt": prompt, **{metric: summarize([getattr(image, metric) for image in self.images
                                                      if image.prompt == prompt]).to_dict() for metric in METRICS}}
            for prompt in prompts
        ]


@dataclass
class EvalReport:
    settings: dict
    models: dict
    concepts: list[ConceptResult]
    output_dir: str
    complete: bool = True  # False while concepts are still to come
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def overall(self, metric: str) -> Summary:
        return summarize([getattr(image, metric) for concept in self.concepts for image in concept.images])

    def to_dict(self) -> dict:
        """The JSON form (`results.json`, `--json`); `compare` reads it back. Format "elite-eval/1"."""
        return {
            "format": REPORT_FORMAT,
            "elite_version": __version__,
            "created": self.created,
            "output_dir": self.output_dir,
            "complete": self.complete,
            "settings": self.settings,
            "models": self.models,
            "overall": {metric: self.overall(metric).to_dict() for metric in METRICS},
            "concepts": {
                concept.name: {
                    "class_word": concept.class_word,
                    "source_image": concept.source_image,
                    "contact_sheet": concept.contact_sheet,
                    **{metric: concept.summary(metric).to_dict() for metric in METRICS},
                    "prompts": concept.per_prompt(),
                    "images": [asdict(image) for image in concept.images],
                }
                for concept in self.concepts
            },
        }


# ---- the run ---------------------------------------------------------------------------------

def check_fresh(subjects: Sequence[Subject], models: "Models") -> None:
    """Concepts encoded with other mapper checkpoints than the loaded ones would measure the wrong model."""
    from elite_cli.model.concept import refuse_stale

    refuse_stale(((s.name, s.name, s.concept) for s in subjects), models.global_fingerprint, models.local_fingerprint)


def open_source_image(subject: Subject) -> Image.Image:
    try:
        with Image.open(subject.source_image) as image:
            return image.convert("RGB")
    except (OSError, ValueError):
        raise InputError(f"the source image of <{subject.name}> ('{subject.source_image}') cannot be read; re-add the concept from a PNG, JPEG or WebP picture.") from None


def write_report(report: EvalReport, path: Path) -> None:
    """results.json, replaced whole so a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    partial.replace(path)


def save_image(image: Image.Image, path: Path, record: dict) -> None:
    """A PNG with its generation parameters in an `elite-eval` text chunk; written whole or not at all."""
    info = PngImagePlugin.PngInfo()
    info.add_text("elite-eval", json.dumps(record, ensure_ascii=False, sort_keys=True))
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG", pnginfo=info)
    partial.replace(path)


class EvalRunner:
    """`EvalRunner(models, metric_models).run(subjects, settings, output_dir)` -> EvalReport."""

    def __init__(self, models: "Models", metric_models: MetricModels):
        from elite_cli.model.generator import Generator

        self.models = models
        self.metrics = metric_models
        self.generator = Generator(models)

    def model_description(self) -> dict:
        spec = self.models.spec
        return {
            "base_model": spec.base_model,
            "image_encoder": spec.image_encoder,
            "global_mapper": self.models.global_fingerprint,
            "local_mapper": self.models.local_fingerprint,
            "clip_model": self.metrics.clip_source,
            "dino_model": self.metrics.dino_source,
        }

    def run(self, subjects: Sequence[Subject], settings: EvalSettings, output_dir: Path,
            progress: Progress | None = None) -> EvalReport:
        settings.check()
        if not subjects:
            raise InputError("no concepts to evaluate; name at least one concept or picture file.")
        output_dir = Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise InputError(f"output folder '{output_dir}' is a file; pass a folder with -o.")
        total = sum(len(templates_for(subject, settings)) for subject in subjects) * settings.num_images
        done = 0
        report = EvalReport(
            settings={**user_keys(asdict(settings)), "prompts": "dreambench" if settings.prompts is None else list(settings.prompts),
                      "clip_t_subject": "class word when known, else removed"},
            models=self.model_description(),
            concepts=[],
            output_dir=str(output_dir),
            complete=False,
        )
        for number, subject in enumerate(subjects):
            def advance(images: int, label: str, subject=subject) -> None:
                nonlocal done
                done += images
                if progress is not None:
                    progress(done, total, f"<{subject.name}> {label}")

            report.concepts.append(self.evaluate_subject(subject, settings, output_dir, advance))
            # Written after every concept: a DreamBench run takes hours, and an interrupted
            # one should still leave the scores it has (marked "complete": false).
            report.complete = number == len(subjects) - 1
            write_report(report, output_dir / "results.json")
        return report

    def evaluate_subject(self, subject: Subject, settings: EvalSettings, output_dir: Path,
                         advance: Callable[[int, str], None]) -> ConceptResult:
        from elite_cli.model.generator import Job

        source = open_source_image(subject)
        source_clip = self.metrics.clip.embed_images([source])
        source_dino = self.metrics.dino.embed_images([source])
        folder = output_dir / subject.name
        folder.mkdir(parents=True, exist_ok=True)
        result = ConceptResult(subject.name, subject.class_word, str(subject.source_image))
        templates = templates_for(subject, settings)
        rows = [SheetRow(generation_prompt(template, subject.name), []) for template in templates]
        # Every (prompt, image) of the concept, denoised batch_size at a time: the generator gives
        # the same image for a job whatever batch it is in, so batching changes speed only.
        work = [(number, Job(row.prompt, settings.seed + index, settings.negative_prompt))
                for number, row in enumerate(rows) for index in range(settings.num_images)]
        for start in range(0, len(work), settings.batch_size):
            chunk = work[start:start + settings.batch_size]
            images = self.generator.generate_batch(
                [job for _, job in chunk], {subject.name: subject.concept}, steps=settings.steps,
                guidance_scale=settings.guidance_scale, llambda=settings.llambda, width=settings.width,
                height=settings.height, scheduler=settings.scheduler,
            )
            texts = [clip_t_text(templates[number], subject.class_word) for number, _ in chunk]
            clip_features = self.metrics.clip.embed_images(images)
            clip_t = paired_cosine(self.metrics.clip.embed_texts(texts), clip_features)
            clip_i = mean_cosine_to_references(source_clip, clip_features)
            dino = mean_cosine_to_references(source_dino, self.metrics.dino.embed_images(images))
            for position, ((number, job), image) in enumerate(zip(chunk, images)):
                path = folder / f"{number:02d}-s{job.seed}.png"
                save_image(image, path, {"prompt": job.prompt, "seed": job.seed, "steps": settings.steps,
                                         "guidance_scale": settings.guidance_scale, "lambda": settings.llambda,
                                         "scheduler": settings.scheduler, "negative_prompt": job.negative_prompt})
                result.images.append(ImageScore(job.prompt, texts[position], job.seed, str(path), float(clip_t[position]),
                                                float(clip_i[position]), float(dino[position])))
                # Only tile-sized copies wait for the sheet: 100 full 512 px images would be ~75 MB.
                rows[number].images.append(fit(image, SHEET_TILE))
                rows[number].seeds.append(job.seed)
            advance(len(chunk), chunk[-1][1].prompt)
        sheet_path = output_dir / f"{subject.name}-sheet.png"
        contact_sheet(source, rows, tile=SHEET_TILE, title=f"<{subject.name}>").save(sheet_path)
        result.contact_sheet = str(sheet_path)
        return result
