"""What each control of the web UI does, as plain functions over the API session (no Gradio).

Every library or model call goes through `SessionWorker` (one thread, see worker.py). Problems
come back as the one-line `Error: ...` message the CLI would print, never as a traceback in the
page; nothing here stores anything the API did not store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from elite_cli.errors import InputError
from elite_cli.common.failures import internal_message, user_message
from elite_cli.common.outputs import code_keys
from elite_cli.ui.worker import SessionWorker

if TYPE_CHECKING:
    import numpy as np

    from elite_cli.api import Session
    from elite_cli.generation.jobs import GenerationJob
    from elite_cli.generation.run import GeneratedImage, GenerationResult
    from elite_cli.library import HistoryEntry, StoredConcept
    from elite_cli.ui.modes import PanelSettings

# How the object is marked on an added picture: painted in the page, a mask file, the whole
# picture ("none"), or found by the segmenter ("auto", as `elite add` without a mask does).
MASK_PAINT, MASK_FILE, MASK_NONE, MASK_AUTO = "paint", "file", "none", "auto"
HISTORY_LIMIT = 50  # runs shown in the history table
TAG_SEPARATORS = re.compile(r"[\s,]+")


def automatic_mask_available() -> bool:
    """Whether `Session.add_concept` takes mask="auto" (the automatic mask of `elite add`)."""
    try:
        from elite_cli.model.masks import MASK_MODES
    except ImportError:  # an elite without automatic masks
        return False
    return "auto" in MASK_MODES


def error_message(error: BaseException, uploads: dict[str, str] | None = None) -> str:
    """The CLI's `Error: ...` line for `error`; the server's copies of uploaded files are named
    by the names they had on the user's machine."""
    message = user_message(error) or internal_message(error)
    for copy, original in (uploads or {}).items():
        message = message.replace(copy, original)
    return f"Error: {message}"


def parse_tags(text: str | None) -> list[str]:
    """'pets, cats' or 'pets cats' -> ['pets', 'cats'] (each checked by the API)."""
    return [tag for tag in TAG_SEPARATORS.split(text or "") if tag]


def form_settings(*, images: Any, seed: Any, lambda_: Any, guidance: Any, steps: Any, width: Any,
                  height: Any) -> dict[str, Any]:
    """The Generate form's numbers as `Actions.generate` takes them. The page's sliders only send
    numbers, but its API (`gradio_client`, plain HTTP) may send anything: NaN, Infinity, null or
    text is one `Error:` line naming the field, as the API says for a bad lambda or guidance;
    the ranges are the API's to check. A seed that is empty or below 0 means a random one."""

    def number(value: Any, label: str, whole: bool) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            shown = "null" if value is None else repr(value) if isinstance(value, str) else value
            raise InputError(f"{label} must be a {'whole ' if whole else ''}number, not {shown}.")
        if whole and value != int(value):
            raise InputError(f"{label} must be a whole number, not {value}.")
        return int(value) if whole else float(value)

    checked_seed = None if seed is None else number(seed, "Seed", whole=True)
    return dict(n=number(images, "Images", True), seed=None if checked_seed is None or checked_seed < 0 else checked_seed,
                lambda_=number(lambda_, "Lambda", False), guidance=number(guidance, "Guidance", False),
                steps=number(steps, "Steps", True), width=number(width, "Width", True),
                height=number(height, "Height", True))


def insert_placeholder(prompt: str | None, name: str) -> str:
    """The prompt with `<name>` added at its end (a space between), for a concept picked in the gallery."""
    prompt = (prompt or "").rstrip()
    return f"{prompt} <{name}>" if prompt else f"<{name}>"


def painted_mask(layers: list["np.ndarray"] | None, size: tuple[int, int] | None = None) -> "np.ndarray | None":
    """The object mask painted in the editor: every pixel any paint layer covers (alpha > 0), as a
    bool HxW array at the picture's (width, height); None when nothing is painted."""
    import numpy as np

    painted = None
    for layer in layers or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer.reshape(layer.shape[:2]) > 0
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    if size is not None and (painted.shape[1], painted.shape[0]) != tuple(size):
        from PIL import Image

        # The editor may show a large picture smaller than it is; the API wants the picture's size.
        resized = Image.fromarray(painted.astype(np.uint8) * 255, "L").resize(tuple(size), Image.NEAREST)
        painted = np.asarray(resized) > 127
    return painted


@dataclass
class ConceptCard:
    """One concept in the gallery."""

    name: str
    tags: tuple[str, ...]
    thumbnail: Path
    stale: bool | None  # encoded by other mappers than the configured ones (generation refuses it)
    picture: Path | None = None  # the stored picture it was encoded from (None: imported without one)

    @property
    def caption(self) -> str:
        caption = f"<{self.name}>"
        if self.tags:
            caption += "  " + ", ".join(self.tags)
        return caption + ("  (stale)" if self.stale else "")


@dataclass
class ConceptDetails:
    """The selected concept as the Library shows it."""

    name: str
    picture: Path | None  # the preview (object on the picture), else the picture, else the thumbnail
    markdown: str


@dataclass
class Outcome:
    """What an action shows: one line of text, and whether it worked."""

    message: str
    ok: bool = True


@dataclass
class GenerationUpdate:
    """One thing a running generation reports: a denoising step, a saved image, a warning, or the end."""

    step: tuple[int, int] | None = None
    image: "GeneratedImage | None" = None
    warning: str | None = None
    result: "GenerationResult | None" = None
    error: str | None = None


@dataclass
class HistoryRow:
    """One generated image as the history table shows it."""

    entry: "HistoryEntry"
    cells: list[Any] = field(default_factory=list)

    @property
    def path(self) -> Path | None:
        return Path(self.entry.output_path) if self.entry.output_path else None


HISTORY_COLUMNS = ["made", "prompt", "seed", "steps", "guidance", "lambda", "scheduler", "size", "file"]


def settings_of(entry: "HistoryEntry") -> dict[str, Any]:
    """A history row's parameters under the code's names: rows store `lambda` (older ones
    `llambda`), the code and the page's form say `llambda`."""
    return code_keys(entry.parameters)


def history_cells(entry: "HistoryEntry") -> list[Any]:
    parameters = settings_of(entry)
    created = entry.created.replace("T", " ")[:16]
    size = f"{parameters.get('width', '?')}x{parameters.get('height', '?')}"
    return [created, entry.prompt, entry.seed, parameters.get("steps"), parameters.get("guidance_scale"),
            parameters.get("llambda"), parameters.get("scheduler"), size,
            Path(entry.output_path).name if entry.output_path else ""]


def describe(entry: "HistoryEntry") -> str:
    """The parameters of one history image as Markdown (user text escaped: `<name>` is no HTML tag)."""
    from html import escape

    parameters = settings_of(entry)
    lines = [f"**{escape(entry.prompt)}**", "",
             f"- seed {entry.seed}, {parameters.get('steps')} steps, guidance {parameters.get('guidance_scale')}, "
             f"lambda {parameters.get('llambda')}, scheduler {parameters.get('scheduler')}, "
             f"{parameters.get('width')}x{parameters.get('height')}"]
    if entry.negative_prompt:
        lines.append(f"- negative prompt: {escape(entry.negative_prompt)}")
    if entry.concept_ids:
        lines.append("- concepts: " + ", ".join(f"&lt;{name}&gt; {concept_id.split(':')[-1][:12]}"
                                                for name, concept_id in entry.concept_ids.items()))
    lines.append(f"- run {entry.run_id[:12]}, made {entry.created}")
    if entry.output_path:
        lines.append(f"- file {escape(entry.output_path)}")
    return "\n".join(lines)


def job_for_image(entry: "HistoryEntry"):
    """The job that makes exactly this history image again (its seed, settings and the concepts
    it used, by id), from its row alone: the PNG may have been moved or deleted since."""
    from elite_cli.generation.jobs import MODEL_KEYS, GenerationJob
    from elite_cli.model.mode_options import ImageMode

    parameters = settings_of(entry)
    settings = {key: parameters[key] for key in GenerationJob("").settings() if key in parameters}
    return GenerationJob(prompt=entry.prompt, negative_prompt=entry.negative_prompt, seed=entry.seed, num_images=1,
                         concept_ids=dict(entry.concept_ids),
                         recorded_models={key: str(entry.parameters[key]) for key in MODEL_KEYS
                                          if entry.parameters.get(key)},
                         mode=ImageMode.from_dict(entry.parameters.get("mode")), **settings)


@dataclass
class ReusedSettings:
    """"Edit these settings" for one history image: the job that made it (the form's prompt, seed
    and settings), what the picture panel shows, and one line when the picture is not put back."""

    job: "GenerationJob"
    panel: "PanelSettings"
    message: str = ""


class Actions:
    """The UI's actions on one session (through its worker thread)."""

    def __init__(self, worker: SessionWorker):
        self.worker = worker

    # --- the library ------------------------------------------------------------------------------

    def concept_cards(self) -> list[ConceptCard]:
        def read(session: "Session") -> list[ConceptCard]:
            concepts = session.concepts()
            stale = session.stale_flags(concepts)
            return [ConceptCard(concept.name, tuple(concept.tags), concept.thumbnail_path, flag, concept.image_path)
                    for concept, flag in zip(concepts, stale)]

        return self.worker.call(read)

    def check_picture(self, picture: str) -> Outcome:
        """Check an uploaded picture as `elite add` checks it (before any mask is painted on it)."""
        from elite_cli.model.images import prepare_image

        try:
            prepare_image(picture)
        except Exception as error:
            return Outcome(error_message(error, {picture: Path(picture).name}), ok=False)
        return Outcome("")

    def add_concept(self, picture: str | None, mask_mode: str, mask_file: str | None, painted: Any,
                    name: str | None, tags: str | None, uploads: dict[str, str] | None = None,
                    object_text: str | None = None) -> Outcome:
        """Add the uploaded picture as a concept, checked by the API exactly as `elite add` checks files.

        painted: the editor's paint layers (RGBA arrays) when the mask is painted; object_text: what
        the automatic mask looks for (`elite add --object`; empty: the default object).
        """
        uploads = dict(uploads or {})
        try:
            if not picture:
                raise InputError("there is no picture; upload a PNG, JPEG or WebP picture of the object first.")
            mask: Any = None
            if mask_mode == MASK_FILE:
                if not mask_file:
                    raise InputError("there is no mask file; upload one (white = object), or choose another way "
                                     "to mark the object.")
                mask = mask_file
            elif mask_mode == MASK_PAINT:
                mask = self.worker.call(_painted_mask_for, picture, painted)
            elif mask_mode == MASK_NONE:
                mask = "none"  # None would ask the API for the picture's transparency, else the segmenter
            elif mask_mode == MASK_AUTO:
                mask = "auto"
            wanted_object = (object_text or "").strip() or None if mask_mode == MASK_AUTO else None
            stored = self.worker.call(lambda session: session.add_concept(
                picture, mask, name=(name or "").strip() or None, tags=parse_tags(tags), object_text=wanted_object))
        except Exception as error:  # every failure is one message in the page; the API stored nothing
            return Outcome(error_message(error, uploads), ok=False)
        if stored.duplicate:
            return Outcome(f"This picture is in the library already, as <{stored.name}>.")
        tags_text = f" (tags: {', '.join(stored.tags)})" if stored.tags else ""
        return Outcome(f"Added <{stored.name}>{tags_text}; use it in a prompt as <{stored.name}>.")

    def preview_automatic_mask(self, picture: str, object_text: str | None = None,
                               uploads: dict[str, str] | None = None) -> tuple[bytes | None, Outcome]:
        """The automatic mask `add` would use (the same segmenter, object and threshold), drawn as
        `elite add` draws its preview: the object kept, the background dimmed, the encoder's square
        outlined. Nothing is stored."""

        def find(session: "Session") -> tuple[bytes, str]:
            from elite_cli.library.thumbnails import preview_png
            from elite_cli.model.masks import MaskChooser

            segmenter = session.setting("segmenter")
            session.fetch_missing_models(encoding=False, segmenter=segmenter)
            with MaskChooser("auto", (object_text or "").strip() or None, segmenter, session.setting("device"),
                             session.setting("dtype")) as chooser:
                chosen = chooser.choose(picture)
                drawn = preview_png(Path(picture), chosen.path)
            share = f"{chosen.coverage * 100:.1f}%" if chosen.coverage < 0.1 else f"{chosen.coverage * 100:.0f}%"
            text = f"Found '{chosen.object_text}': it covers {share} of the picture (shown bright in the preview)."
            return drawn, text + (f" Warning: {chosen.warning}" if chosen.warning else "")

        try:
            drawn, text = self.worker.call(find)
        except Exception as error:
            return None, Outcome(error_message(error, uploads), ok=False)
        for copy, original in (uploads or {}).items():
            text = text.replace(copy, original)
        return drawn, Outcome(text)

    def concept_details(self, name: str) -> ConceptDetails:
        """What the Library shows of the selected concept: its picture with the mask, where the mask
        came from, its tags and when it was added."""
        from html import escape

        from elite_cli.model.masks import describe_mask_source

        def read(session: "Session") -> ConceptDetails:
            stored = session.concept(name)
            origin = session.mask_origin(stored)
            shown = next((path for path in (stored.preview_path, stored.image_path, stored.thumbnail_path)
                          if path is not None and path.is_file()), None)
            lines = [f"**&lt;{escape(stored.name)}&gt;** (id {stored.short_id})",
                     f"- mask: {escape(describe_mask_source(origin), quote=False)}",
                     f"- tags: {escape(', '.join(stored.tags), quote=False) or 'none'}",
                     f"- added {stored.created.replace('T', ' ')[:16]}"]
            if stored.image_path is None:
                lines.append("- no stored picture (imported from a concept file)")
            return ConceptDetails(stored.name, shown, "\n".join(lines))

        return self.worker.call(read)

    def export_concept(self, name: str, folder: Path) -> tuple[Path | None, Outcome]:
        """Write the concept as `elite export NAME -o FOLDER/NAME.elite.safetensors` writes it."""
        target = Path(folder) / f"{name}.elite.safetensors"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            result = self.worker.call(lambda session: session.export(name, target, "elite", overwrite=True))
        except Exception as error:
            return None, Outcome(error_message(error), ok=False)
        return Path(result.path), Outcome("")

    def rename(self, old: str | None, new: str | None) -> tuple[Outcome, str | None]:
        """Rename a concept; also returns the name it has afterwards (for the selection)."""
        try:
            if not old:
                raise InputError("no concept is selected; click one in the gallery first.")
            stored = self.worker.call(lambda session: session.rename(old, (new or "").strip()))
        except Exception as error:
            return Outcome(error_message(error), ok=False), old
        return Outcome(f"Renamed <{old}> to <{stored.name}>; prompts now call it <{stored.name}>."), stored.name

    def set_tags(self, name: str | None, tags: str | None) -> Outcome:
        """Give a concept exactly these tags (the ones left out are taken off)."""
        wanted = parse_tags(tags)

        def retag(session: "Session") -> "StoredConcept":
            current = session.concept(name)
            dropped = [tag for tag in current.tags if tag not in wanted]
            added = [tag for tag in wanted if tag not in current.tags]
            if added:
                current = session.tag(name, *added)
            if dropped:
                current = session.untag(name, *dropped)
            return current

        try:
            if not name:
                raise InputError("no concept is selected; click one in the gallery first.")
            stored = self.worker.call(retag)
        except Exception as error:
            return Outcome(error_message(error), ok=False)
        return Outcome(f"<{stored.name}> tags: {', '.join(stored.tags) or 'none'}.")

    def remove(self, name: str | None) -> Outcome:
        try:
            if not name:
                raise InputError("no concept is selected; click one in the gallery first.")
            self.worker.call(lambda session: session.remove(name))
        except Exception as error:
            return Outcome(error_message(error), ok=False)
        return Outcome(f"Removed <{name}> from the library.")

    # --- generating -------------------------------------------------------------------------------

    def generate(self, prompt: str, *, negative_prompt: str = "", n: int = 1, seed: int | None = None,
                 steps: int = 50, guidance: float = 5.0, lambda_: float = 0.8, scheduler: str = "lms",
                 width: int = 512, height: int = 512, source: tuple | None = None) -> Iterator[GenerationUpdate]:
        """Generate through the API, yielding each step, saved image and warning as they come,
        then one update with the result (or the error). source: the values of the "Start from a
        picture" panel (elite_cli/ui/modes.py)."""

        def run(session: "Session", emit: Callable[[Any], None]) -> "GenerationResult":
            from elite_cli.ui.modes import generation_options

            return session.generate(
                prompt, n=n, seed=seed, steps=steps, guidance=guidance, lambda_=lambda_,
                negative_prompt=negative_prompt or "", width=width, height=height, scheduler=scheduler,
                **(generation_options(session, *source) if source else {}), **_reporting(emit))

        return self._follow(run)

    def make_again(self, entry: "HistoryEntry") -> Iterator[GenerationUpdate]:
        """Make one history image again: the same prompt, seed, settings and concepts."""
        job = job_for_image(entry)

        def run(session: "Session", emit: Callable[[Any], None]) -> "GenerationResult":
            # Through the repeat path when the PNG is still there (it warns when the models changed).
            if entry.output_path and Path(entry.output_path).is_file():
                return session.repeat(entry.output_path, **_reporting(emit))
            return session.generate(jobs=[job], **_reporting(emit))

        return self._follow(run)

    def reuse_settings(self, entry: "HistoryEntry") -> ReusedSettings:
        """The settings of one history image for the Generate form, read as "Make it again" reads
        them (`job_for_image`), with its picture and painted region when the run started from one."""
        from elite_cli.ui.modes import panel_settings

        job = job_for_image(entry)
        panel = panel_settings(job.mode)
        message = f"Error: the settings are back but not the picture: {panel.problem}" if panel.problem else ""
        return ReusedSettings(job, panel, message)

    def _follow(self, run: Callable[..., "GenerationResult"]) -> Iterator[GenerationUpdate]:
        for event in self.worker.call_with_events(run):
            if isinstance(event, GenerationUpdate):
                yield event
                continue
            error = event.exception()  # the Future: the call is over
            if error is not None:
                yield GenerationUpdate(error=error_message(error))
            else:
                yield GenerationUpdate(result=event.result())

    # --- history ----------------------------------------------------------------------------------

    def history(self, limit: int = HISTORY_LIMIT) -> list[HistoryRow]:
        """Images of the latest runs (made here or by `elite gen`), newest run first."""
        runs = self.worker.call(lambda session: session.history(limit=limit))
        return [HistoryRow(entry, history_cells(entry)) for run in runs for entry in run.images]


def _reporting(emit: Callable[[Any], None]) -> dict[str, Callable[..., None]]:
    return {"progress": lambda step, total: emit(GenerationUpdate(step=(step, total))),
            "on_image": lambda image: emit(GenerationUpdate(image=image)),
            "on_warning": lambda message: emit(GenerationUpdate(warning=message))}


def _painted_mask_for(session: "Session", picture: str, painted: Any) -> "np.ndarray":
    """The painted mask at the picture's size. The picture is checked first, as `elite add` checks it,
    so that a bad upload is reported as such rather than as a missing mask."""
    from PIL import Image, ImageOps

    from elite_cli.model.images import prepare_image

    prepare_image(picture)  # raises the same InputError as `elite add` for an unreadable picture
    with Image.open(picture) as opened:
        size = ImageOps.exif_transpose(opened).size
    mask = painted_mask(painted, size)
    if mask is None:
        others = "'Find it automatically', 'Mask file'" if automatic_mask_available() else "'Mask file'"
        raise InputError("nothing is painted on the picture; paint over the object (the brush marks it), "
                         f"or choose {others} or 'Whole picture'.")
    return mask
