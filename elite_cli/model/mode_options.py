"""Starting from the user's own pictures: img2img, inpainting and ControlNet (issue 23).

`ImageMode` is what one `elite gen` call asks for besides its prompts: a picture to start from
(`--init-image FILE --strength S`), a picture with a region to repaint (`--inpaint FILE --region
MASK|auto`), and pictures whose edges or depth the image follows (`--control KIND=FILE`). It is a
plain value: it goes into every job of the call, into each PNG's `elite` chunk and history row
(with the sha256 of every source picture), and comes back from them for `--again`.

Everything here runs before any model loads and needs no torch: a bad option or picture fails
in one line and nothing is written. The tensors are made by elite_cli/model/modes.py.
Torch-free (Pillow and numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elite_cli.errors import InputError

CONTROL_KINDS = ("canny", "depth")
# What each kind's ControlNet and (for depth) its map model are, as settings (elite config).
CONTROLNET_SETTINGS = {"canny": "controlnet_canny", "depth": "controlnet_depth"}
DEPTH_MODEL_SETTING = "depth_model"
# diffusers' own defaults: StableDiffusionImg2ImgPipeline's strength, and inpainting's.
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}
AUTO_REGION = "auto"


@dataclass(frozen=True)
class SourcePicture:
    """A picture the user gave, with the sha256 of its bytes when it was used."""

    path: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class Control:
    """One `--control KIND=FILE`: the picture (or a ready map), and the models that follow it."""

    kind: str
    picture: SourcePicture
    controlnet: str  # hub id or folder of a ControlNet for SD 1.x
    is_map: bool = False  # the picture is already an edge/depth map (--control-image-is-map)
    depth_model: str = ""  # for kind "depth" made from a photo: the depth estimator

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, **self.picture.to_dict(), "controlnet": self.controlnet, "is_map": self.is_map}
        if self.depth_model:
            data["depth_model"] = self.depth_model
        return data


@dataclass(frozen=True)
class ImageMode:
    """How a call uses the user's pictures; an ImageMode with nothing set is text-to-image."""

    init_image: SourcePicture | None = None  # img2img
    inpaint: SourcePicture | None = None  # the picture to repaint part of
    region: SourcePicture | None = None  # its region mask (white = repaint); None with region_object
    region_object: str = ""  # --region auto --object TEXT: what the segmenter looks for
    segmenter: str = ""  # the segmenter that finds it
    inpaint_model: str = ""  # a 9-channel inpainting UNet (diffusers folder or hub id); "" = the base UNet
    strength: float = 1.0
    controls: tuple[Control, ...] = field(default_factory=tuple)
    control_scale: float = 1.0

    @property
    def is_plain(self) -> bool:
        return self.init_image is None and self.inpaint is None and not self.controls

    @property
    def source(self) -> SourcePicture | None:
        """The picture the latents start from (img2img or inpainting), if any."""
        return self.inpaint or self.init_image

    def to_dict(self) -> dict[str, Any]:
        """The JSON the PNG chunk and the history row keep (only what is set)."""
        data: dict[str, Any] = {}
        if self.init_image is not None:
            data["init_image"] = self.init_image.to_dict()
        if self.inpaint is not None:
            data["inpaint"] = self.inpaint.to_dict()
            if self.region is not None:
                data["region"] = self.region.to_dict()
            else:
                data["region"] = {"auto": self.region_object, "segmenter": self.segmenter}
            if self.inpaint_model:
                data["inpaint_model"] = self.inpaint_model
        if self.source is not None:
            data["strength"] = self.strength
        if self.controls:
            data["control"] = [control.to_dict() for control in self.controls]
            data["control_scale"] = self.control_scale
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ImageMode | None":
        """What `to_dict` wrote (a PNG chunk or history row), or None for text-to-image."""
        if not data:
            return None

        def picture(item: dict[str, Any] | None) -> SourcePicture | None:
            return None if item is None else SourcePicture(str(item["path"]), str(item["sha256"]))

        region = data.get("region") or {}
        controls = tuple(Control(kind=str(item["kind"]), picture=SourcePicture(str(item["path"]), str(item["sha256"])),
                                 controlnet=str(item["controlnet"]), is_map=bool(item.get("is_map", False)),
                                 depth_model=str(item.get("depth_model", "")))
                         for item in data.get("control", []))
        return cls(init_image=picture(data.get("init_image")), inpaint=picture(data.get("inpaint")),
                   region=picture(region) if "path" in region else None,
                   region_object=str(region.get("auto", "")), segmenter=str(region.get("segmenter", "")),
                   inpaint_model=str(data.get("inpaint_model", "")), strength=float(data.get("strength", 1.0)),
                   controls=controls, control_scale=float(data.get("control_scale", 1.0)))

    def model_settings(self) -> dict[str, str]:
        """{setting: value} of the models this mode loads besides the base ones (for downloads)."""
        values = {}
        for control in self.controls:
            values[f"controlnet_{control.kind}"] = control.controlnet
            if control.depth_model:
                values[DEPTH_MODEL_SETTING] = control.depth_model
        if self.inpaint is not None and self.inpaint_model:
            values["inpaint_model"] = self.inpaint_model
        if self.inpaint is not None and self.region is None:
            values["segmenter"] = self.segmenter
        return {key: value for key, value in values.items() if value}

    def check_sources_unchanged(self, again: str) -> None:
        """--again: every source picture must still be there with the same bytes."""
        pictures = [self.init_image, self.inpaint, self.region] + [control.picture for control in self.controls]
        for picture in pictures:
            if picture is None:
                continue
            path = Path(picture.path)
            if not path.is_file():
                raise InputError(f"the source picture '{path}' that {again} used is gone; put it back to repeat the run.")
            if file_sha256(path) != picture.sha256:
                raise InputError(f"the source picture '{path}' that {again} used has changed since; put the original "
                                 "back to repeat the run, or start a new run from it.")


def file_sha256(path: Path) -> str:
    from elite_cli.model.images import sha256_tag  # Pillow and numpy load only when a source is hashed

    return sha256_tag(Path(path).read_bytes())


def open_picture(path: str | Path, what: str) -> tuple[Any, SourcePicture]:
    """(the decoded PIL picture, its SourcePicture), or one InputError naming the flag."""
    from elite_cli.model.images import _open

    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder; pass a PNG, JPEG or WebP picture.")
    image, sha256 = _open(path, what)
    return image, SourcePicture(str(path.resolve()), sha256)


def open_recorded_picture(picture: SourcePicture, what: str) -> Any:
    """The decoded picture a mode recorded, refused unless its bytes still have the recorded sha256:
    every image is made from the very picture its PNG and history row name. Under several processes
    each one reads the picture itself and checks it against the main process's record (a file
    saved again while the run started, or another machine's different copy, is one Error line)."""
    image, current = open_picture(picture.path, what)
    if current.sha256 != picture.sha256:
        raise InputError(f"{what} '{picture.path}' is not the picture this run recorded (it changed while the run "
                         "started, or another process's machine holds a different copy); run the command again "
                         "once the picture is the same everywhere.")
    return image


def check_strength(strength: float) -> None:
    import math

    if not isinstance(strength, (int, float)) or math.isnan(strength) or not 0 < strength <= 1:
        raise InputError(f"--strength must be a number above 0 and at most 1 but is {strength}.")


def parse_control(value: str) -> tuple[str, str]:
    """`KIND=FILE` -> (kind, file); an unknown kind or a missing '=' is one line."""
    kind, separator, path = value.partition("=")
    kind = kind.strip().lower()
    if not separator or not path:
        raise InputError(f"--control takes KIND=FILE (kinds: {', '.join(CONTROL_KINDS)}), not {value!r}.")
    if kind not in CONTROL_KINDS:
        raise InputError(f"--control kind {kind!r} is unknown; use one of {', '.join(CONTROL_KINDS)} (e.g. canny=photo.jpg).")
    return kind, path


def check_region(region: Any, picture: Any, region_path: str) -> None:
    """The region must be the picture's size, or have its aspect ratio (then it is resized with it);
    and it must mark something to repaint."""
    import numpy as np

    (width, height), (region_width, region_height) = picture.size, region.size
    if (width, height) != (region_width, region_height) and width * region_height != height * region_width:
        raise InputError(f"--region '{region_path}' is {region_width}x{region_height} but the picture is {width}x{height}; "
                         "pass a region of the picture's size (or of its aspect ratio, which is resized to it).")
    if not (np.asarray(region.convert("L"), dtype=np.float32) >= 127.5).any():
        raise InputError(f"--region '{region_path}' is empty (no white pixel): paint the part to repaint white.")


def build_image_mode(*, init_image: str | Path | None = None, strength: float | None = None,
                     inpaint: str | Path | None = None, region: str | Path | None = None,
                     region_object: str | None = None, inpaint_model: str | None = None,
                     control: list[str] | tuple[str, ...] = (), control_scale: float = 1.0,
                     control_image_is_map: bool = False, settings: dict[str, str] | None = None) -> ImageMode | None:
    """Check the options of one call and read its pictures (not the models): an ImageMode, or None
    when none of them is given. settings: the ControlNet, depth, segmenter and inpaint_model settings
    by key (inpaint_model: the setting's model unless the call names one; "" = the base UNet)."""
    settings = settings or {}
    if init_image is not None and inpaint is not None:
        raise InputError("--init-image and --inpaint both give the picture to start from; pass one of them.")
    if inpaint is None and (region is not None or region_object is not None or inpaint_model):
        raise InputError("--region, --object and --inpaint-model go with --inpaint FILE; add it or leave them out.")
    if inpaint is not None and region is None:
        raise InputError("--inpaint needs --region MASK (white = repaint) or --region auto --object TEXT.")
    if region_object is not None and str(region) != AUTO_REGION:
        raise InputError("--object names what --region auto looks for; pass --region auto with it.")
    if init_image is None and inpaint is None and strength is not None:
        raise InputError("--strength goes with --init-image or --inpaint; add one of them or leave it out.")
    if not control and (control_image_is_map or control_scale != 1.0):
        raise InputError("--control-scale and --control-image-is-map go with --control KIND=FILE.")
    if init_image is None and inpaint is None and not control:
        return None
    if strength is None:
        strength = DEFAULT_STRENGTH["inpaint" if inpaint is not None else "img2img"]
    check_strength(strength)
    import math

    if math.isnan(control_scale) or control_scale < 0:
        raise InputError(f"--control-scale must be 0 or more but is {control_scale}.")
    mode: dict[str, Any] = {"strength": float(strength), "control_scale": float(control_scale)}
    if init_image is not None:
        mode["init_image"] = open_picture(init_image, "--init-image")[1]
    if inpaint is not None:
        picture, mode["inpaint"] = open_picture(inpaint, "--inpaint")
        mode["inpaint_model"] = settings.get("inpaint_model", "") if inpaint_model is None else inpaint_model
        if str(region) == AUTO_REGION:
            if region_object is not None and not region_object.strip():
                raise InputError("--object is empty; name what to repaint, e.g. --object 'the cushion'.")
            from elite_cli.model.segment import DEFAULT_OBJECT

            mode["region_object"] = (region_object or DEFAULT_OBJECT).strip()
            mode["segmenter"] = settings.get("segmenter", "")
        else:
            mask, mode["region"] = open_picture(region, "--region")
            check_region(mask, picture, str(region))
    controls = []
    for value in control:
        kind, path = parse_control(value)
        if any(existing.kind == kind for existing in controls):
            raise InputError(f"--control {kind}=... is given twice; pass one picture per kind.")
        controls.append(Control(kind=kind, picture=open_picture(path, f"--control {kind} picture")[1],
                                controlnet=settings.get(CONTROLNET_SETTINGS[kind], ""), is_map=control_image_is_map,
                                depth_model="" if kind != "depth" or control_image_is_map
                                else settings.get(DEPTH_MODEL_SETTING, "")))
    return ImageMode(controls=tuple(controls), **mode)


def check_mode_fits(mode: ImageMode | None, steps: int) -> None:
    """A strength so low that no denoising step is left (diffusers would fail mid-way)."""
    if mode is None or mode.source is None:
        return
    if min(int(steps * mode.strength), steps) < 1:
        raise InputError(f"--strength {mode.strength:g} with {steps} steps leaves no denoising step "
                         f"(steps x strength must reach 1); raise --strength or --steps.")
