"""The Generate page's "Start from a picture" panel (docs/modes.md): upload a picture, then make a
new one from it, repaint a region painted on it (the same painting as the Library's mask), or
follow its edges or depth. What it asks for goes to `Session.generate` like `elite gen`'s
`--init-image`, `--inpaint --region` and `--control`; the images land in History like any run.

The picture and the painted region are kept in the library's `sources` folder under the sha256 of
their bytes, so that "Make it again" finds them after the browser's upload is gone, and so that
"Edit these settings" puts them back in the panel (`panel_settings`).
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
    import numpy as np

    from elite_cli.api import Session
    from elite_cli.model.mode_options import ImageMode

FROM_PROMPT = "Only the prompt"
START_FROM = "Start from this picture"
REPAINT = "Repaint the painted region"
FOLLOW_EDGES = "Follow its edges"
FOLLOW_DEPTH = "Follow its depth"
CHOICES = (FROM_PROMPT, START_FROM, REPAINT, FOLLOW_EDGES, FOLLOW_DEPTH)
SOURCES_DIR = "sources"
BRUSH_COLOR = (255, 45, 111)  # the editor's one brush colour; a restored region is painted in it
SLIDER_STRENGTH, SLIDER_CONTROL_SCALE = 0.8, 1.0  # the sliders' values before anything is chosen


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
class PanelSettings:
    """What the panel shows for a history row ("Edit these settings"): the way the run used its
    picture, the picture and the painted region (an RGBA paint layer of the picture's size), and
    `problem`, why the picture is not put back (then `picture` is None; the rest still is)."""

    choice: str = FROM_PROMPT
    picture: Path | None = None
    region: "np.ndarray | None" = None
    strength: float = SLIDER_STRENGTH
    control_scale: float = SLIDER_CONTROL_SCALE
    problem: str = ""


def panel_settings(mode: "ImageMode | None") -> PanelSettings:
    """The panel for a run's recorded mode (`job_for_image(entry).mode`, the reader "Make it again"
    uses): each source picture is checked as `elite gen --again` checks it (there, same sha256)."""
    if mode is None or mode.is_plain:
        return PanelSettings()
    unsupported = _beyond_the_panel(mode)
    if unsupported:
        return PanelSettings(problem=f"{unsupported}, which the picture panel cannot hold; 'Make it again' repeats "
                                     "the run exactly.")
    if mode.controls:
        [control] = mode.controls
        settings = PanelSettings(choice=FOLLOW_EDGES if control.kind == "canny" else FOLLOW_DEPTH,
                                 control_scale=mode.control_scale)
        source = control.picture
    else:
        settings = PanelSettings(choice=REPAINT if mode.inpaint else START_FROM, strength=mode.strength)
        source = mode.source
    try:
        mode.check_sources_unchanged("this run")
    except InputError as error:
        settings.problem = str(error)
        return settings
    settings.picture = Path(source.path)
    if mode.region is not None:
        settings.region = region_layer(Path(mode.region.path), settings.picture)
    return settings


def _beyond_the_panel(mode: "ImageMode") -> str:
    """What a run made by `elite gen` asked for that the panel has no control for ("" if nothing)."""
    if len(mode.controls) > 1 or (mode.controls and mode.source is not None):
        return "this run used more than one picture (`elite gen` with several --control or --init-image)"
    if mode.controls and mode.controls[0].is_map:
        return "this run followed a ready map (`elite gen --control-image-is-map`)"
    if mode.inpaint is not None and mode.region is None:
        return f"this run's region was found automatically (`--region auto --object '{mode.region_object}'`)"
    return ""


def region_layer(region: Path, picture: Path) -> "np.ndarray":
    """The region picture (white = repaint) as the editor's paint layer over `picture`: the brush's
    colour where white, transparent elsewhere, at the picture's size (a region of the picture's
    aspect ratio is resized, as generation resizes it). `region_file` reads it back as the same mask."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(picture) as opened:
        size = ImageOps.exif_transpose(opened).size
    with Image.open(region) as opened:
        mask = opened.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    white = np.asarray(mask) >= 128
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    layer[white] = (*BRUSH_COLOR, 255)
    return layer


@dataclass
class ModePanel:
    accordion: Any
    choice: Any
    picture: Any
    editor: Any
    strength: Any
    control_scale: Any

    @property
    def inputs(self) -> list[Any]:
        """The components whose values `generation_options` takes, in its order."""
        return [self.choice, self.picture, self.editor, self.strength, self.control_scale]

    def show(self, gr: "gr", settings: PanelSettings, picture: str | None) -> list[Any]:
        """Updates of `inputs` (then the accordion) that show `settings`; `picture` is its picture as the page
        serves it. Set from the server, these values fire none of the panel's own events (input, upload,
        clear), which would clear the region."""
        repaint = settings.choice == REPAINT and picture is not None
        editor = ({"background": picture, "layers": [] if settings.region is None else [settings.region],
                   "composite": None} if picture else None)
        return [gr.Radio(value=settings.choice), gr.File(value=picture), gr.ImageEditor(value=editor, visible=repaint),
                gr.Slider(value=settings.strength, visible=settings.choice in (START_FROM, REPAINT)),
                gr.Slider(value=settings.control_scale, visible=settings.choice in (FOLLOW_EDGES, FOLLOW_DEPTH)),
                gr.Accordion(open=settings.choice != FROM_PROMPT)]

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
    with gr.Accordion("Start from a picture", open=False, elem_id="modes") as accordion:
        picture = gr.File(label="Your picture (PNG, JPEG, WebP)", type="filepath", file_types=["image"],
                          elem_id="mode-picture")
        choice = gr.Radio(list(CHOICES), value=FROM_PROMPT, label="Use it to", elem_id="mode-choice")
        editor = gr.ImageEditor(label="Paint the region to repaint", type="numpy", sources=(), layers=False,
                                transforms=(), visible=False, height=420, elem_id="region-editor",
                                brush=gr.Brush(colors=["#%02x%02x%02x" % BRUSH_COLOR], color_mode="fixed"))
        with gr.Row():
            strength = gr.Slider(0.05, 1.0, value=SLIDER_STRENGTH, step=0.05, label="Strength (how much is repainted)",
                                 visible=False, elem_id="strength")
            control_scale = gr.Slider(0.0, 2.0, value=SLIDER_CONTROL_SCALE, step=0.05, label="Control scale (how closely it is followed)",
                                      visible=False, elem_id="control-scale")

    def picture_changed(choice_value, picture_path):
        background = {"background": picture_path, "layers": [], "composite": None} if picture_path else None
        return gr.ImageEditor(value=background, visible=choice_value == REPAINT and bool(picture_path))

    def choice_changed(choice_value, picture_path):
        # Visibility only: a region painted before the user switched to another way and back stays.
        repaint = choice_value == REPAINT
        return (gr.ImageEditor(visible=repaint and bool(picture_path)),
                gr.Slider(visible=choice_value in (START_FROM, REPAINT), value=1.0 if repaint else SLIDER_STRENGTH),
                gr.Slider(visible=choice_value in (FOLLOW_EDGES, FOLLOW_DEPTH)))

    # The user's changes only: "Edit these settings" sets the whole panel (ModePanel.show), and a
    # `change` event would then clear the region it restored.
    choice.input(choice_changed, [choice, picture], [editor, strength, control_scale])
    for event in (picture.upload, picture.clear):
        event(picture_changed, [choice, picture], editor)
    return ModePanel(accordion, choice, picture, editor, strength, control_scale)

