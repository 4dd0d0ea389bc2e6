"""Effective settings: each value comes from a flag, the environment, the library's config.toml,
or a built-in default, in that order, and remembers where it came from so `elite config` can say.

Pure Python (tomllib only): the CLI resolves settings before it knows whether torch is needed.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elite_cli.errors import InputError

CONFIG_FILE_NAME = "config.toml"
MODELS_DIR_NAME = "models"
GLOBAL_MAPPER_FILE = "global_mapper.safetensors"
LOCAL_MAPPER_FILE = "local_mapper.safetensors"
# Under the models folder: the safetensors form of mappers downloaded from hf:// settings.
HUB_MAPPERS_DIR = "hub"
# The mappers the ELITE authors publish on the Hub (hf://owner/repo/path, see elite_cli/model/hub.py).
HUB_GLOBAL_MAPPER = "hf://ELITE-library/ELITE/checkpoints/global_mapper.pt"
HUB_LOCAL_MAPPER = "hf://ELITE-library/ELITE/checkpoints/local_mapper.pt"
HF_SCHEME = "hf://"

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Setting:
    """One setting the user can change: its key in config.toml and its environment variable."""

    key: str
    env: str
    help: str
    # Paths given in config.toml are relative to the library dir, so a library folder can be
    # moved with its config; paths from flags or the environment are relative to the cwd.
    is_path: bool = False
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("base_model", "ELITE_BASE_MODEL", "Stable Diffusion 1.x: hub id or diffusers folder"),
    Setting("image_encoder", "ELITE_IMAGE_ENCODER", "CLIP ViT-L/14 vision tower: hub id or folder"),
    Setting("global_mapper", "ELITE_GLOBAL_MAPPER", "global mapper checkpoint (.safetensors or reference .pt file, or hf://owner/repo/path)", is_path=True),
    Setting("local_mapper", "ELITE_LOCAL_MAPPER", "local mapper checkpoint (.safetensors or reference .pt file, or hf://owner/repo/path)", is_path=True),
    Setting("segmenter", "ELITE_SEGMENTER", "CLIPSeg model that finds the object for automatic masks: hub id or folder"),
    Setting("device", "ELITE_DEVICE", "where models run", choices=DEVICES),
    Setting("dtype", "ELITE_DTYPE", "weight precision", choices=DTYPES),
    Setting("output_dir", "ELITE_OUTPUT_DIR", "where `elite gen` writes PNG files", is_path=True),
    Setting("eval_clip_model", "ELITE_EVAL_CLIP_MODEL", "CLIP of `elite eval`'s CLIP-T/CLIP-I: hub id or folder"),
    Setting("eval_dino_model", "ELITE_EVAL_DINO_MODEL", "DINO ViT of `elite eval`'s DINO score: hub id or folder"),
    Setting("controlnet_canny", "ELITE_CONTROLNET_CANNY", "ControlNet for SD 1.x that `gen --control canny=FILE` follows: hub id or folder"),
    Setting("controlnet_depth", "ELITE_CONTROLNET_DEPTH", "ControlNet for SD 1.x that `gen --control depth=FILE` follows: hub id or folder"),
    Setting("depth_model", "ELITE_DEPTH_MODEL", "transformers depth estimator (DPT, Depth Anything) that makes depth maps: hub id or folder"),
    Setting("inpaint_model", "ELITE_INPAINT_MODEL", "9-channel SD 1.x inpainting model for `gen --inpaint` (empty: the base model's UNet): hub id or folder"),
)
SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Resolved:
    """A setting's effective value and its source: 'flag', 'env VAR', 'config <path>' or 'default'."""

    key: str
    value: str
    source: str


# The metric models of `elite eval`: Textual Inversion's evaluator uses CLIP ViT-B/32; DreamBench
# papers add DINO ViT-S/16.
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"


def defaults(library: Path) -> dict[str, str]:
    """The built-in values. The mappers: the pair `elite models import` wrote into the library's
    models folder when both files are there, else the ELITE authors' files on the Hub."""
    models_dir = library / MODELS_DIR_NAME
    imported = (models_dir / GLOBAL_MAPPER_FILE, models_dir / LOCAL_MAPPER_FILE)
    use_imported = all(path.is_file() for path in imported)
    return {
        "base_model": "CompVis/stable-diffusion-v1-4",
        "image_encoder": "openai/clip-vit-large-patch14",
        "global_mapper": str(imported[0]) if use_imported else HUB_GLOBAL_MAPPER,
        "local_mapper": str(imported[1]) if use_imported else HUB_LOCAL_MAPPER,
        "segmenter": "CIDAS/clipseg-rd64-refined",
        "device": "auto",
        "dtype": "auto",
        "output_dir": "elite-out",
        "eval_clip_model": DEFAULT_CLIP_MODEL,
        "eval_dino_model": DEFAULT_DINO_MODEL,
        # The SD 1.5 ControlNets fit SD 1.4 (same UNet); MiDaS (DPT-Hybrid) made the depth model's training maps.
        "controlnet_canny": "lllyasviel/sd-controlnet-canny",
        "controlnet_depth": "lllyasviel/sd-controlnet-depth",
        "depth_model": "Intel/dpt-hybrid-midas",
        "inpaint_model": "",
    }


def config_path(library: Path) -> Path:
    return library / CONFIG_FILE_NAME


def read_config_file(library: Path) -> dict[str, str]:
    """The settings in `<library>/config.toml`, or {} when there is none."""
    path = config_path(library)
    try:
        with open(path, "rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"config file '{path}' is not valid TOML ({error}); fix or delete it.") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in SETTINGS_BY_KEY:
            known = ", ".join(SETTINGS_BY_KEY)
            raise InputError(f"config file '{path}' has unknown key '{key}'; known keys are {known}.")
        if not isinstance(value, str):
            raise InputError(f"config file '{path}' key '{key}' must be a string, not {type(value).__name__}.")
        values[key] = value
    return values


def resolve(
    library: Path,
    flags: dict[str, str | None] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Resolved]:
    """Every setting's effective value: flag, then environment, then config.toml, then default."""
    flags = flags or {}
    environ = dict(os.environ) if environ is None else environ
    from_file = read_config_file(library)
    builtin = defaults(library)
    resolved: dict[str, Resolved] = {}
    for setting in SETTINGS:
        flag_value = flags.get(setting.key)
        if flag_value:
            value, source = flag_value, "flag"
        elif environ.get(setting.env):
            value, source = environ[setting.env], f"env {setting.env}"
        elif setting.key in from_file:
            value, source = from_file[setting.key], f"config {config_path(library)}"
            if setting.is_path and not value.startswith(HF_SCHEME):
                value = str(library / Path(value).expanduser())
        else:
            value, source = builtin[setting.key], "default"
        if not is_valid_choice(setting, value):
            raise InputError(f"{setting.key} '{value}' (from {source}) is not one of {accepted_values(setting)}.")
        if setting.is_path and not value.startswith(HF_SCHEME):  # a Hub file is no path ('//' would fold)
            value = str(Path(value).expanduser())
        resolved[setting.key] = Resolved(setting.key, value, source)
    return resolved


def is_valid_choice(setting: Setting, value: str) -> bool:
    if not setting.choices or value in setting.choices:
        return True
    # A numbered GPU ("cuda:1") is a device too.
    return setting.key == "device" and re.fullmatch(r"cuda:\d+", value) is not None


def accepted_values(setting: Setting) -> str:
    accepted = ", ".join(setting.choices)
    return accepted + " or cuda:N" if setting.key == "device" else accepted


def set_config_value(library: Path, key: str, value: str) -> Path:
    """Write one key of `<library>/config.toml`; returns its path.

    The file is rewritten from the parsed values, so comments in it are not kept.
    """
    setting = _known_setting(key)
    if not is_valid_choice(setting, value):
        raise InputError(f"{key} '{value}' is not one of {accepted_values(setting)}.")
    values = read_config_file(library)
    values[key] = value
    return _write_config_file(library, values)


def unset_config_value(library: Path, key: str) -> tuple[Path, bool]:
    """Remove one key from `<library>/config.toml`: (its path, whether the key was there)."""
    _known_setting(key)
    values = read_config_file(library)
    if key not in values:
        return config_path(library), False
    del values[key]
    return _write_config_file(library, values), True


def _known_setting(key: str):
    if key not in SETTINGS_BY_KEY:
        raise InputError(f"unknown setting '{key}'; known settings are {', '.join(SETTINGS_BY_KEY)}.")
    return SETTINGS_BY_KEY[key]


def _write_config_file(library: Path, values: dict[str, str]) -> Path:
    path = config_path(library)
    path.parent.mkdir(parents=True, exist_ok=True)
    # TOML basic strings accept JSON's escapes for everything a path or hub id holds.
    import json

    text = "".join(f"{name} = {json.dumps(values[name], ensure_ascii=False)}\n" for name in sorted(values))
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path
