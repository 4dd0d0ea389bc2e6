"""The tensors and extra models of img2img, inpainting and ControlNet (issue 23).

`prepare_mode(mode, models, width, height)` turns an `ImageMode` (elite_cli/model/mode_options.py:
pictures, region, controls) into a `PreparedMode` the Generator's one denoising loop uses:

- the source picture as diffusers' VaeImageProcessor makes it ([-1, 1], resized to the image size),
- the region as diffusers' mask processor makes it (grey, binarised at 0.5: white = repaint),
- each control picture's map (edges from Pillow, depth from a transformers depth model) at the
  image size in [0, 1], with its ControlNet loaded through the usual model route (hub id or folder,
  cached, downloaded once), and refused when it is not for SD 1.x's text width.

ELITE's attention processors live in the UNet only; a ControlNet keeps its own attention, as
in diffusers' StableDiffusionControlNetPipeline. A 9-channel inpainting UNet gets ELITE's
processors through the same `install_elite_processors` as the base UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from elite_cli.errors import InputError, ModelError
from elite_cli.model.mode_options import Control, ImageMode, open_recorded_picture

# Pillow's edge filter (not OpenCV's Canny): a light blur against noise, FIND_EDGES, then this
# threshold on the 0-255 edge strength gives the white-on-black map the canny ControlNet reads.
EDGE_BLUR_RADIUS = 1.0
EDGE_THRESHOLD = 32

_CONTROLNETS: dict[tuple, Any] = {}
_INPAINT_UNETS: dict[tuple, Any] = {}
_DEPTH_MODELS: dict[tuple, Any] = {}


@dataclass
class ControlInput:
    controlnet: Any  # diffusers ControlNetModel, its own attention processors
    image: torch.Tensor  # [1, 3, H, W] in [0, 1], the map at the image size
    kind: str


@dataclass
class PreparedMode:
    """What one call's denoising loop needs besides prompts and seeds."""

    strength: float = 1.0
    source: torch.Tensor | None = None  # [1, 3, H, W] in [-1, 1]: the picture to start from
    mask: torch.Tensor | None = None  # [1, 1, H, W], 1 = repaint (inpainting)
    inpaint_unet: Any = None  # a 9-channel UNet with ELITE's processors, or None (4-channel blending)
    controls: list[ControlInput] = field(default_factory=list)
    control_scale: float = 1.0

    @property
    def is_inpainting(self) -> bool:
        return self.mask is not None


@dataclass
class StartingPoint:
    """Per batch: where its denoising starts and what each step mixes in (Generator.prepare_start)."""

    timesteps: torch.Tensor
    noise: torch.Tensor | None = None  # [B, 4, h, w]: each job's noise
    picture_latents: torch.Tensor | None = None  # [B, 4, h, w]: each job's VAE sample of the picture
    mask: torch.Tensor | None = None  # [B, 1, h, w] at latent size (inpainting)
    masked_latents: torch.Tensor | None = None  # [B, 4, h, w]: 9-channel inpainting's masked picture
    blend: bool = False  # 4-channel inpainting: the known region is put back after every step
    controls: list = field(default_factory=list)  # [(controlnet, [B, 3, H, W] map)]


def image_processors(models) -> tuple[Any, Any, Any]:
    """diffusers' own three processors: picture ([-1, 1]), region (binarised), control map ([0, 1])."""
    from diffusers.image_processor import VaeImageProcessor

    factor = models.vae_scale_factor
    return (VaeImageProcessor(vae_scale_factor=factor),
            VaeImageProcessor(vae_scale_factor=factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True),
            VaeImageProcessor(vae_scale_factor=factor, do_convert_rgb=True, do_normalize=False))


def edge_map(picture: Image.Image, width: int, height: int) -> Image.Image:
    """White edges on black, at the image size (Pillow's edge filter; see EDGE_THRESHOLD)."""
    grey = picture.convert("L").resize((width, height), Image.LANCZOS).filter(ImageFilter.GaussianBlur(EDGE_BLUR_RADIUS))
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES))
    edges = np.where(edges >= EDGE_THRESHOLD, 255, 0).astype(np.uint8)
    edges[0, :] = edges[-1, :] = edges[:, 0] = edges[:, -1] = 0  # the filter's frame is not an edge of the picture
    return Image.fromarray(edges, "L").convert("RGB")


def depth_map(picture: Image.Image, source: str, models, width: int, height: int) -> Image.Image:
    """Near = white, as the depth ControlNets were trained: a transformers depth model's output,
    resized to the image and stretched to 0-255 (what diffusers' ControlNet examples do)."""
    estimator, processor = load_depth_model(source, models)
    inputs = processor(images=picture.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        depth = estimator(pixel_values=inputs["pixel_values"].to(models.device, models.dtype)).predicted_depth
    depth = torch.nn.functional.interpolate(depth.reshape(1, 1, *depth.shape[-2:]).float(), size=(height, width),
                                            mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return Image.fromarray((scaled * 255.0).round().clip(0, 255).astype(np.uint8), "L").convert("RGB")


def load_depth_model(source: str, models):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from elite_cli.model.loading import load_pretrained

    key = (source, str(models.device), models.dtype)
    if key not in _DEPTH_MODELS:
        if not source:
            raise InputError("no depth model is set; set one with `elite config set depth_model HUB_ID_OR_FOLDER`.")
        model = load_pretrained(AutoModelForDepthEstimation.from_pretrained, source, "depth model", kind="transformers",
                                weights=True)
        processor = load_pretrained(AutoImageProcessor.from_pretrained, source, "depth model's processor",
                                    kind="transformers")
        _DEPTH_MODELS[key] = (model.to(models.device, models.dtype).eval().requires_grad_(False), processor)
    return _DEPTH_MODELS[key]


def load_controlnet(source: str, kind: str, models):
    """The ControlNet of a kind, loaded once per process; refused unless it fits the base model."""
    from diffusers import ControlNetModel

    from elite_cli.model.loading import load_pretrained

    key = (source, str(models.device), models.dtype)
    if key not in _CONTROLNETS:
        if not source:
            raise InputError(f"no ControlNet is set for {kind}; set one with `elite config set controlnet_{kind} HUB_ID_OR_FOLDER`.")
        controlnet = load_pretrained(ControlNetModel.from_pretrained, source, f"{kind} ControlNet", kind="transformers",
                                     weights=True, prefer_fp16=models.dtype == torch.float16)
        width = int(controlnet.config.cross_attention_dim)
        if width != models.text_width:
            raise ModelError(f"the {kind} ControlNet '{source}' reads {width}-wide text but the base model's is "
                             f"{models.text_width}-wide (SD 1.x: 768); use a ControlNet made for Stable Diffusion 1.x.")
        if int(controlnet.config.in_channels) != int(models.vae.config.latent_channels):
            raise ModelError(f"the {kind} ControlNet '{source}' takes {controlnet.config.in_channels}-channel latents but "
                             f"the base model's VAE makes {models.vae.config.latent_channels}; use one made for SD 1.x.")
        resting = torch.device("cpu") if models.spec.low_vram else models.device
        _CONTROLNETS[key] = controlnet.to(resting, models.dtype).eval().requires_grad_(False)
    return _CONTROLNETS[key]


def load_inpaint_unet(source: str, models):
    """A 9-channel inpainting UNet (a diffusers SD folder, or a UNet folder), with ELITE's processors."""
    from diffusers import UNet2DConditionModel

    from elite_cli.model.attention import cross_attention_modules, install_elite_processors
    from elite_cli.model.loading import load_pretrained
    from elite_cli.model.mappers import check_against_unet, module_key

    key = (source, str(models.device), models.dtype)
    if key not in _INPAINT_UNETS:
        from pathlib import Path

        folder = Path(source).expanduser()
        # A diffusers SD folder or hub id (its unet/), or a UNet folder itself.
        subfolder = "unet" if (folder / "unet").is_dir() or not folder.exists() else ""
        unet = load_pretrained(UNet2DConditionModel.from_pretrained, source, "inpainting model", kind="unet",
                               subfolder=subfolder, weights=True, prefer_fp16=models.dtype == torch.float16)
        if int(unet.config.in_channels) != 9:
            raise ModelError(f"the inpainting model '{source}' has a {unet.config.in_channels}-channel UNet, not the 9 "
                             "channels of an SD inpainting model; unset inpaint_model to inpaint with the base model.")
        shapes = {module_key(name): tuple(module.to_k.weight.shape) for name, module in cross_attention_modules(unet).items()}
        check_against_unet(models.global_mapper, shapes, f"the inpainting model '{source}'")
        resting = torch.device("cpu") if models.spec.low_vram else models.device
        unet.to(resting, models.dtype).eval().requires_grad_(False)
        install_elite_processors(unet, models.global_mapper, models.local_mapper, models.backend)
        _INPAINT_UNETS[key] = unet
    return _INPAINT_UNETS[key]


def find_region(mode: ImageMode, picture: Image.Image, models) -> Image.Image:
    """--region auto: the segmenter's object mask (white = repaint)."""
    from elite_cli.model import segment

    segmenter = segment.load_segmenter(mode.segmenter or segment.DEFAULT_SEGMENTER, models.spec.device, models.spec.dtype)
    found = segment.auto_mask(segmenter, picture.convert("RGB"), mode.region_object, segment.AUTO_MASK_THRESHOLD)
    if not found.any():
        raise InputError(f"no '{mode.region_object}' found in '{mode.inpaint.path}' for --region auto; "
                         "pass --region MASK or another --object.")
    return Image.fromarray(found.astype(np.uint8) * 255, "L")


def prepare_mode(mode: ImageMode, models, width: int, height: int) -> PreparedMode:
    """Pictures -> tensors, and the extra models loaded (see the module docstring)."""
    picture_processor, mask_processor, control_processor = image_processors(models)
    prepared = PreparedMode(strength=mode.strength, control_scale=mode.control_scale)
    if mode.source is not None:
        picture = open_recorded_picture(mode.source, "--inpaint" if mode.inpaint else "--init-image")
        prepared.source = picture_processor.preprocess(picture.convert("RGB"), height=height, width=width).to(torch.float32)
        if mode.inpaint is not None:
            region = (open_recorded_picture(mode.region, "--region") if mode.region is not None
                      else find_region(mode, picture, models))
            prepared.mask = mask_processor.preprocess(region, height=height, width=width)
            if mode.inpaint_model:
                prepared.inpaint_unet = load_inpaint_unet(mode.inpaint_model, models)
    for control in mode.controls:
        image = control_processor.preprocess(control_map(control, models, width, height), height=height,
                                             width=width).to(torch.float32)
        prepared.controls.append(ControlInput(load_controlnet(control.controlnet, control.kind, models), image,
                                              control.kind))
    return prepared


def control_map(control: Control, models, width: int, height: int) -> Image.Image:
    """The map a ControlNet follows, as a picture: the user's own map, or one made from the picture."""
    picture = open_recorded_picture(control.picture, f"--control {control.kind} picture")
    if control.is_map:
        return picture.convert("RGB")
    if control.kind == "canny":
        return edge_map(picture, width, height)
    return depth_map(picture, control.depth_model, models, width, height)
