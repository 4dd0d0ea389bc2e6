"""The Generate page's "Start from a picture" panel (docs/modes.md): upload a picture, then make a
new one from it, repaint a region painted on it (the same painting as the Library's mask), or
follow its edges or depth. What it asks for goes to `Session.generate` like `elite gen`'s
`--init-image`, `--inpaint --region` and `--control`; the images land in History like any run.

The picture and the painted region are kept in the library's `sources` folder under the sha256 of
their bytes, so that "Make it again" finds them after the browser's upload is gone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elite_cli.errors import InputError
from elite_cli.library.conceptfile import atomic_write

if TYPE_CHECKING:
    import gradio as gr

    from elite_cli.api import Session

FROM_PROMPT = "Only the prompt"
START_FROM = "Start from this picture"
REPAINT = "Repaint the painted region"
FOLLOW_EDGES = "Follow its edges"
FOLLOW_DEPTH = "Follow its depth"
CHOICES = (FROM_PROMPT, START_FROM, REPAINT, FOLLOW_EDGES, FOLLOW_DEPTH)
SOURCES_DIR = "sources"


def keep(library: Path, data: bytes, suffix: str) -> Path:
    """A copy of `data` in the library's sources folder, named by its sha256 (written once)."""
    folder = library / SOURCES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        atomic_write(path, data)
    return path


def generation_options(session: "Session", choice: str, picture: str | None, painted: Any, strength: float,
                       control_scale: float) -> dict[str, Any]:
    """The keyword options of `Session.generate` for the panel's choice (none for the prompt only)."""
    if choice in (None, FROM_PROMPT):
        return {}
    if choice not in CHOICES:
        raise InputError(f"unknown way to use the picture {choice!r}; choose one of {', '.join(CHOICES)}.")
    if not picture:
        raise InputError("there is no picture to start from; upload one under 'Start from a picture', "
                         f"or choose '{FROM_PROMPT}'.")
    from elite_cli.model.images import prepare_image

    prepare_image(picture)  # an unreadable upload is said as `elite gen` says it
    source = keep(session.library, Path(picture).read_bytes(), Path(picture).suffix.lower() or ".png")
    if choice == START_FROM:
        return {"init_image": source, "strength": float(strength)}
    if choice == REPAINT:
        return {"inpaint": source, "region": region_file(session.library, source, painted), "strength": float(strength)}
    kind = "canny" if choice == FOLLOW_EDGES else "depth"
    return {"control": [f"{kind}={source}"], "control_scale": float(control_scale)}


def region_file(library: Path, picture: Path, painted: Any) -> Path:
    """The painted region (white = repaint) as a PNG of the picture's size, kept in the library."""
    import io

    from PIL import Image, ImageOps

    from elite_cli.ui.actions import painted_mask

    with Image.open(picture) as opened:
        size = ImageOps.exif_transpose(opened).size
    # The editor's value ({"background", "layers", "composite"}), or its paint layers alone.
    layers = painted.get("layers") if isinstance(painted, dict) else painted
    mask = painted_mask(layers, size)
    if mask is None:
        raise InputError("nothing is painted on the picture; paint the region to repaint, or choose another way to "
                         "use the picture.")
    buffer = io.BytesIO()
    Image.fromarray(mask.astype("uint8") * 255, "L").save(buffer, format="PNG")
    return keep(library, buffer.getvalue(), ".png")


@dataclass
class ModePanel:
    choice: Any
    picture: Any
    editor: Any
    strength: Any
    control_scale: Any

    @property
    def inputs(self) -> list[Any]:
        """The components whose values `generation_options` takes, in its order."""
        return [self.choice, self.picture, self.editor, self.strength, self.control_scale]

    def preprocess(self, values: tuple) -> tuple:
        """The panel's values as its components give them (a file path, the editor's numpy layers).
        The Generate event runs with preprocess=False so that its numbers reach form_settings as
        sent (page.py), which leaves the uploads as Gradio's serialized file records; the numbers
        here (strength, control scale) are checked by Session.generate."""
        processed = []
        for component, value in zip(self.inputs, values):
            data_model = getattr(component, "data_model", None)
            if data_model is not None and value is not None:
                try:
                    value = component.preprocess(data_model.model_validate(value))
                except (ValueError, TypeError, OSError) as error:  # pydantic's ValidationError is a ValueError
                    raise InputError(f"the panel's {component.label!r} is not an uploaded picture ({type(error).__name__}); "
                                     "upload a PNG, JPEG or WebP picture.") from None
            processed.append(value)
        return tuple(processed)


def build_mode_panel(gr: "gr") -> ModePanel:
    """The panel, inside the Generate column; its events show what the chosen way needs."""
    with gr.Accordion("Start from a picture", open=False, elem_id="modes"):
        picture = gr.File(label="Your picture (PNG, JPEG, WebP)", type="filepath", file_types=["image"],
                          elem_id="mode-picture")
        choice = gr.Radio(list(CHOICES), value=FROM_PROMPT, label="Use it to", elem_id="mode-choice")
        editor = gr.ImageEditor(label="Paint the region to repaint", type="numpy", sources=(), layers=False,
                                transforms=(), visible=False, height=420, elem_id="region-editor",
                                brush=gr.Brush(colors=["#ff2d6f"], color_mode="fixed"))
        with gr.Row():
            strength = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="Strength (how much is repainted)",
                                 visible=False, elem_id="strength")
            control_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control scale (how closely it is followed)",
                                      visible=False, elem_id="control-scale")

    def shown(choice_value, picture_path):
        repaint = choice_value == REPAINT
        background = {"background": picture_path, "layers": [], "composite": None} if picture_path else None
        return (gr.ImageEditor(value=background, visible=repaint and bool(picture_path)),
                gr.Slider(visible=choice_value in (START_FROM, REPAINT), value=1.0 if repaint else 0.8),
                gr.Slider(visible=choice_value in (FOLLOW_EDGES, FOLLOW_DEPTH)))

    choice.change(shown, [choice, picture], [editor, strength, control_scale])
    picture.change(shown, [choice, picture], [editor, strength, control_scale])
    return ModePanel(choice, picture, editor, strength, control_scale)

