"""Tiny, random, offline stand-ins for the models of img2img / inpainting / ControlNet (issue 23).

Built next to a tiny model set (elite_cli/model/tiny.py) and shaped like its UNet, in the on-disk
layouts of the real ones: two ControlNets (diffusers folders, like lllyasviel/sd-controlnet-*),
a DPT depth estimator with its image processor (a transformers folder, like Intel/dpt-hybrid-midas)
and a 9-channel inpainting model (a diffusers folder with `unet/`, like the SD inpainting
checkpoints). Their output convolutions are random instead of zero, so that each one really
changes the images the tests compare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MARKER = "elite-tiny-modes.json"
TINY_VERSION = 1


@dataclass
class TinyModeModels:
    controlnet_canny: Path
    controlnet_depth: Path
    depth_model: Path
    inpaint_model: Path


def build_tiny_mode_models(directory: str | Path, base_model: str | Path, seed: int = 0) -> TinyModeModels:
    """Build (or reuse, if already built here) the tiny mode models for the tiny base model's UNet."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from elite_cli.model.loading import _disable_progress_bars

    _disable_progress_bars()
    directory = Path(directory)
    paths = TinyModeModels(directory / "controlnet-canny", directory / "controlnet-depth", directory / "depth",
                           directory / "inpainting")
    marker = directory / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
        return paths
    unet = UNet2DConditionModel.from_pretrained(Path(base_model) / "unet")
    for offset, path in enumerate((paths.controlnet_canny, paths.controlnet_depth)):
        torch.manual_seed(seed + 5 + offset)
        controlnet = ControlNetModel.from_unet(unet)
        for name, parameter in controlnet.named_parameters():
            # from_unet zeroes these (a ControlNet starts as a no-op before training).
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                torch.nn.init.normal_(parameter, std=0.05)
        controlnet.save_pretrained(path)
    torch.manual_seed(seed + 7)
    UNet2DConditionModel.from_config({**unet.config, "in_channels": 9}).save_pretrained(paths.inpaint_model / "unet")
    build_tiny_depth_model(paths.depth_model, seed + 9)
    marker.write_text(json.dumps({"version": TINY_VERSION}))
    return paths


def build_tiny_depth_model(directory: Path, seed: int = 0) -> None:
    """A random DPT (32 px input) whose depth varies over a picture: the head's last bias is
    positive, so its ReLU does not flatten the map to zero."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
                       patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1)
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("head."):
                torch.nn.init.normal_(parameter, std=0.3)
        model.head.head[4].bias.fill_(2.0)
    model.save_pretrained(directory)
    DPTImageProcessor(do_resize=True, size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=1,
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(directory)
