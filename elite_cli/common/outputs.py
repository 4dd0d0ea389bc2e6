"""Generated PNG files: predictable names that never overwrite, reproducible parameters inside
each file, and saves that leave no partial file behind when interrupted.

Each PNG carries two text chunks:
- `parameters`: the one-line-per-field text AUTOMATIC1111's web UI writes and reads
  (prompt, `Negative prompt: ...`, then `Steps: 50, Sampler: ..., Seed: ...`), so image
  browsers that understand A1111 show the settings;
- `elite`: a JSON object with every parameter `elite gen` needs to repeat the image exactly
  (see `GenerationRecord`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PIL is imported by the functions that write images
    from PIL import Image

PARAMETERS_CHUNK = "parameters"
ELITE_CHUNK = "elite"
SLUG_MAX_LENGTH = 48

# Scheduler names as A1111 spells its samplers, so its UI recognises them.
A1111_SAMPLER_NAMES = {
    "lms": "LMS",
    "ddim": "DDIM",
    "pndm": "PLMS",
    "euler": "Euler",
    "dpm++": "DPM++ 2M",
}


@dataclass
class GenerationRecord:
    """Everything that fixes one generated image (with the concept tensors it names)."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    llambda: float
    width: int
    height: int
    scheduler: str
    base_model: str
    image_encoder: str
    global_mapper: str = ""  # fingerprints "sha256:<hex>"
    local_mapper: str = ""
    # concept name -> its id in the library, so a renamed concept can still be traced.
    concepts: dict[str, str] = field(default_factory=dict)
    index: int = 0  # which image of the call; its seed is the call's seed + index
    run_id: str | int | None = None
    elite_version: str = ""
    # What the models computed in ("float32", "bfloat16", "float16"); "" in files made before it was recorded.
    dtype: str = ""
    # img2img / inpainting / ControlNet (elite_cli/model/mode_options.py): the source pictures
    # with their sha256 and every option; None (left out of the chunk) for text-to-image.
    mode: dict[str, Any] | None = None

    def to_json(self) -> str:
        data = user_keys(asdict(self))
        if data["mode"] is None:
            del data["mode"]
        return json.dumps(data, ensure_ascii=False, sort_keys=True)


# `lambda` is the user's word (`--lambda`) but a Python keyword, so the code's name is `llambda`.
# Files, history rows and --json say `lambda`; those written before said `llambda` and still read.
def user_keys(parameters: dict[str, Any]) -> dict[str, Any]:
    """`llambda` -> `lambda`, for what users see and what is stored."""
    return {("lambda" if key == "llambda" else key): value for key, value in parameters.items()}


def code_keys(parameters: dict[str, Any]) -> dict[str, Any]:
    """`lambda` (or an old file's `llambda`) -> `llambda`, the name elite's functions take."""
    return {("llambda" if key == "lambda" else key): value for key, value in parameters.items()}


def a1111_parameters(record: GenerationRecord) -> str:
    """The `parameters` text A1111 writes: prompt, negative prompt, then one `Key: value` line."""
    fields = [
        ("Steps", record.steps),
        ("Sampler", A1111_SAMPLER_NAMES.get(record.scheduler, record.scheduler)),
        ("CFG scale", _number(record.guidance_scale)),
        ("Seed", record.seed),
        ("Size", f"{record.width}x{record.height}"),
        ("Model", record.base_model),
        ("ELITE lambda", _number(record.llambda)),
    ]
    if record.concepts:
        fields.append(("ELITE concepts", " ".join(sorted(record.concepts))))
    if record.mode and "strength" in record.mode:
        fields.append(("Denoising strength", _number(record.mode["strength"])))
    if record.elite_version:
        fields.append(("Version", f"elite {record.elite_version}"))
    # A1111 separates fields with ", " and quotes values that contain one.
    settings = ", ".join(f"{key}: {_a1111_quote(str(value))}" for key, value in fields)
    lines = [record.prompt]
    if record.negative_prompt:
        lines.append(f"Negative prompt: {record.negative_prompt}")
    lines.append(settings)
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}"


def _a1111_quote(value: str) -> str:
    if "," in value or ":" in value or '"' in value:
        return json.dumps(value, ensure_ascii=False)
    return value


def slugify(prompt: str, max_length: int = SLUG_MAX_LENGTH) -> str:
    """A file-name-safe, lower-case summary of a prompt: `<mycat> on the beach` -> `mycat-on-the-beach`."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    slug = slug[:max_length].rstrip("-")
    return slug or "image"


def image_file_name(prompt: str, seed: int, when: datetime, suffix: int = 0) -> str:
    """`<YYYYmmdd-HHMMSS>-<slug>-<seed>.png`, or `...-<seed>-<suffix>.png` when that is taken."""
    stem = f"{when:%Y%m%d-%H%M%S}-{slugify(prompt)}-{seed}"
    return f"{stem}.png" if suffix == 0 else f"{stem}-{suffix}.png"


def save_png(image: "Image.Image", directory: Path, record: GenerationRecord, when: datetime, first_suffix: int = 0) -> Path:
    """Save `image` with its parameters under a fresh name in `directory`; returns the path.

    first_suffix: the suffix a generation plan reserved for this image (0: the plain name).

    The PNG is written to a hidden temporary file first and then linked to its final name, so
    an interrupted save leaves no partial PNG, and an existing file is never overwritten (the
    name gets a numeric suffix instead, even if another process takes a name meanwhile).
    """
    from PIL.PngImagePlugin import PngInfo

    directory.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, a1111_parameters(record))
    info.add_text(ELITE_CHUNK, record.to_json())
    from elite_cli.common.paths import usual_file_mode

    handle, temporary_name = tempfile.mkstemp(prefix=partial_prefix(), suffix=".png", dir=directory)
    temporary = Path(temporary_name)
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows files have no such modes
            os.fchmod(handle, usual_file_mode())
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG", pnginfo=info)
            stream.flush()
            os.fsync(stream.fileno())
        suffix = first_suffix
        while True:
            final = directory / image_file_name(record.prompt, record.seed, when, suffix)
            try:
                # link() fails if the name exists, which makes "never overwrite" race-free.
                os.link(temporary, final)
                return final
            except FileExistsError:
                suffix += 1
            except OSError:
                # Filesystems without hard links: check-then-rename is the best we can do.
                if final.exists():
                    suffix += 1
                    continue
                os.replace(temporary, final)
                return final
    finally:
        temporary.unlink(missing_ok=True)


# `.elite-partial-<pid>@<host>.<random>.png`: the owner is in the name so that a later run can
# tell a save cut short by a kill (owner gone) from one still in progress in another process.
PARTIAL_NAME = re.compile(r"^\.elite-partial-(\d+)@(.+)\.[^.]+\.png$")


def partial_prefix() -> str:
    import socket

    return f".elite-partial-{os.getpid()}@{socket.gethostname()}."


def remove_abandoned_partials(directory: Path) -> int:
    """Delete the temporary files of saves whose process died (a kill mid-save); returns how many.

    Only files of processes on this host that no longer run are removed; on systems without a
    harmless "is this process alive" probe (Windows) nothing is.
    """
    import socket

    if os.name != "posix" or not directory.is_dir():
        return 0
    host = socket.gethostname()
    removed = 0
    for path in directory.glob(".elite-partial-*.png"):
        match = PARTIAL_NAME.match(path.name)
        if not match or match.group(2) != host:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # still running (maybe saving right now)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # alive under another user, or not a pid at all
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def check_output_folder(directory: Path, empty: bool = False) -> None:
    """Refuse an -o folder that cannot be written before any model loads (nothing is created here).

    It must be a folder or not exist yet; then its nearest existing parent must be a folder.
    Either must be writable. `empty`: a folder that already holds files is refused too (a run
    whose results would sit beside another run's files).
    """
    from elite_cli.errors import InputError

    if directory.exists() and not directory.is_dir():
        raise InputError(f"output folder '{directory}' is a file; pass a folder with -o.")
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"output folder '{directory}' cannot be made: '{existing}' is a file; pass a folder with -o.")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == directory else f" ('{existing}' is not)"
        raise InputError(f"output folder '{directory}' is not writable{where}; pass a folder you can write to with -o.")
    if empty and directory.is_dir() and any(directory.iterdir()):
        raise InputError(f"output folder '{directory}' is not empty; pass a new or empty folder with -o, so its "
                         "results.json matches its images.")


def read_png_parameters(path: Path) -> dict[str, Any]:
    """The `elite` JSON chunk of a PNG written by `save_png` (for tests and `gen --again FILE`),
    with the code's key names (`llambda`, see `code_keys`).

    Anything else (another image format, a file that is no image, a chunk another program
    damaged or a chunk without a field `gen --again` needs) is an InputError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    from elite_cli.errors import InputError

    accepted = "pass a PNG written by `elite gen`, or a run id from `elite history`"
    try:
        with Image.open(path) as image:
            kind = image.format
            text = image.info.get(ELITE_CHUNK)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"'{path}' cannot be read as an image (not an image, or cut short); {accepted}.") from None
    if kind != "PNG":
        raise InputError(f"'{path}' is a {kind} image, not a PNG written by `elite gen`; {accepted}.")
    if text is None:
        raise InputError(f"'{path}' has no elite parameters chunk (another program may have saved it again); {accepted}.")
    try:
        parameters = json.loads(text)
    except ValueError:
        parameters = None
    if not isinstance(parameters, dict):
        raise InputError(f"'{path}' has a damaged elite parameters chunk (not a JSON object); {accepted}.")
    parameters = code_keys(parameters)
    missing = [key for key in REQUIRED_PARAMETERS if key not in parameters]
    if missing:
        raise InputError(f"'{path}' has an elite parameters chunk without {', '.join(missing)}; {accepted}.")
    return parameters


# What `gen --again FILE.png` needs from the `elite` chunk to repeat an image.
REQUIRED_PARAMETERS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "llambda", "width", "height",
                       "scheduler")
