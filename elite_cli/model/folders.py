"""What kind of model a folder holds, read from its config files before any weights load.

A setting pointed at the wrong folder (the segmenter at a CLIP vision tower, the base model at a
UNet folder, an empty folder) used to reach from_pretrained, which fails deep inside with an error
about mismatched sizes or missing keys. Reading the config first turns every such mistake into one
sentence: the setting, the kind of model the folder holds, and what the setting accepts.

`check_model_folder(folder, FOLDER_KINDS["segmenter"], value)` is the check; a new model setting
(a ControlNet, a depth estimator) describes what it accepts as a `FolderKind` and calls the same
function. No torch, no transformers: JSON files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elite_cli.errors import ModelError


@dataclass(frozen=True)
class Component:
    """One config file a model folder must have, and the model types it may name in it."""

    config: str  # path in the folder: "config.json", "unet/config.json"
    model_types: tuple[str, ...] = ()  # transformers' "model_type"
    class_names: tuple[str, ...] = ()  # diffusers' "_class_name"

    def accepts(self, found: dict) -> bool:
        return found.get("model_type") in self.model_types or found.get("_class_name") in self.class_names


@dataclass(frozen=True)
class FolderKind:
    """What a model setting accepts: its name, where the user sets it, and its config files."""

    setting: str  # the setting's key, as `elite config` names it
    label: str  # "segmenter", "base model"
    where: str  # how the user sets it: "ELITE_SEGMENTER", "--base-model or ELITE_BASE_MODEL"
    accepted: str  # in words: "a CLIPSeg model (model_type 'clipseg')"
    example: str  # a hub id that fits
    components: tuple[Component, ...]


FOLDER_KINDS = {
    "base_model": FolderKind(
        "base_model", "base model", "--base-model or ELITE_BASE_MODEL",
        "a Stable Diffusion 1.x diffusers folder (unet/, vae/, text_encoder/ and tokenizer/ with their configs)",
        "CompVis/stable-diffusion-v1-4",
        (Component("unet/config.json", class_names=("UNet2DConditionModel",)),
         Component("vae/config.json", class_names=("AutoencoderKL",)),
         Component("text_encoder/config.json", model_types=("clip_text_model", "clip")))),
    "image_encoder": FolderKind(
        "image_encoder", "image encoder", "--image-encoder or ELITE_IMAGE_ENCODER",
        "a CLIP vision model (config.json with model_type 'clip_vision_model' or 'clip')",
        "openai/clip-vit-large-patch14",
        (Component("config.json", model_types=("clip_vision_model", "clip")),)),
    "segmenter": FolderKind(
        "segmenter", "segmenter", "ELITE_SEGMENTER or `elite config set segmenter`",
        "a CLIPSeg model (config.json with model_type 'clipseg')", "CIDAS/clipseg-rd64-refined",
        (Component("config.json", model_types=("clipseg",)),)),
    "controlnet_canny": FolderKind(
        "controlnet_canny", "canny ControlNet", "ELITE_CONTROLNET_CANNY or `elite config set controlnet_canny`",
        "a diffusers ControlNet (config.json with _class_name 'ControlNetModel')", "lllyasviel/sd-controlnet-canny",
        (Component("config.json", class_names=("ControlNetModel",)),)),
    "controlnet_depth": FolderKind(
        "controlnet_depth", "depth ControlNet", "ELITE_CONTROLNET_DEPTH or `elite config set controlnet_depth`",
        "a diffusers ControlNet (config.json with _class_name 'ControlNetModel')", "lllyasviel/sd-controlnet-depth",
        (Component("config.json", class_names=("ControlNetModel",)),)),
    "depth_model": FolderKind(
        "depth_model", "depth model", "ELITE_DEPTH_MODEL or `elite config set depth_model`",
        "a transformers depth estimation model (config.json with model_type 'dpt', 'depth_anything', "
        "'zoedepth' or another depth type)", "Intel/dpt-hybrid-midas",
        # transformers' AutoModelForDepthEstimation types (MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES),
        # written out because this module reads JSON only and imports no transformers.
        (Component("config.json", model_types=("dpt", "depth_anything", "glpn", "zoedepth", "depth_pro",
                                               "prompt_depth_anything", "chmv2", "tipsv2_dpt")),)),
}


def read_config(path: Path) -> dict | str:
    """A config file's JSON object, or a few words on why there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "missing"
    except (OSError, UnicodeDecodeError) as error:
        return f"unreadable ({type(error).__name__})"
    try:
        found = json.loads(text)
    except ValueError:
        return "not JSON"
    return found if isinstance(found, dict) else "not a JSON object"


def describe_config(found: dict) -> str:
    """What a config says the model is: 'a UNet2DConditionModel (_class_name)', 'a bert model (model_type)'."""
    if found.get("_class_name"):
        return f"a {found['_class_name']} (its _class_name)"
    if found.get("model_type"):
        return f"a '{found['model_type']}' model (its model_type)"
    if found.get("architectures"):
        return f"a {found['architectures'][0]} (its architectures)"
    return "no model type"


def describe_folder(folder: Path) -> str:
    """What a folder holds, as far as its root tells: for the sentence of a folder of the wrong kind."""
    if not folder.is_dir():
        return "not a folder"
    names = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
    if not names:
        return "an empty folder"
    for config in ("model_index.json", "config.json"):
        if config in names:
            found = read_config(folder / config)
            if isinstance(found, dict):
                return f"a folder whose {config} names {describe_config(found)}"
            return f"a folder whose {config} is {found}"
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"a folder without config.json ({shown})"


def check_model_folder(folder: Path, kind: FolderKind, value: str, damaged_hint: str = "") -> None:
    """Raise ModelError (one sentence) unless `folder` holds the kind of model `kind` accepts.

    value: the setting as the user wrote it (a folder or hub id). damaged_hint: what to do when a
    config exists but cannot be read (for a downloaded model: fetch it again).
    """
    start = f"the {kind.label} '{value}' ({kind.where})"
    accepts = f"it accepts {kind.accepted}, as a folder or a hub id such as {kind.example}"
    for component in kind.components:
        found = read_config(folder / component.config)
        if found == "missing":
            raise ModelError(f"{start} is {describe_folder(folder)}, with no {component.config}; {accepts}.")
        if isinstance(found, str):
            raise ModelError(f"{start}: its {component.config} is {found}{damaged_hint or '; ' + accepts}.")
        if not component.accepts(found):
            raise ModelError(f"{start} holds {describe_config(found)} in {component.config}; {accepts}.")
