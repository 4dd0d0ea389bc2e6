"""Finding the object in a picture: the automatic mask for pictures that come without one.

The model is CLIPSeg (transformers' CLIPSegForImageSegmentation): a small decoder over a frozen
CLIP ViT-B/16 that marks, pixel by pixel, where a text prompt is in the picture. It fits what
users bring to ELITE, one main object on any background, and the prompt lets them name the
object when the default finds the wrong thing (docs/masks.md says why this model).

Nothing here prints: loading fails with ModelError, the caller decides what an empty mask means.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported when a segmenter is used: `elite add --mask none` needs none
    import torch
    from PIL import Image

DEFAULT_SEGMENTER = "CIDAS/clipseg-rd64-refined"
# What the automatic mask looks for when the user does not name the object (--object).
DEFAULT_OBJECT = "the main object"
# A pixel is object when CLIPSeg's probability for the prompt is above this.
AUTO_MASK_THRESHOLD = 0.4


@dataclass
class Segmenter:
    """A loaded CLIPSeg model with its processor (image resizing and the CLIP tokenizer)."""

    source: str  # hub id or folder, as configured (recorded with each automatic mask)
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype


_LOADED: dict[tuple[str, str, str], Segmenter] = {}


def load_segmenter(source: str = DEFAULT_SEGMENTER, device: str = "auto", dtype: str = "auto") -> Segmenter:
    """Load (or return the already loaded) segmenter from a hub id or a folder, like every model
    elite loads (elite_cli.model.loading.load_pretrained: the cache first, offline rules, one-sentence
    ModelError)."""
    key = (source, device, dtype)
    if key in _LOADED:
        return _LOADED[key]
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    from elite_cli.errors import ModelError
    from elite_cli.model.loading import load_pretrained, resolve_device, resolve_dtype
    from elite_cli.model.precision import encoding_dtype

    resolved_device = resolve_device(device)
    # The mask is part of the concept: float32 on the CPU, as encoding (precision.encoding_dtype).
    resolved_dtype = encoding_dtype(resolve_dtype(dtype, resolved_device), resolved_device)
    model = load_pretrained(CLIPSegForImageSegmentation.from_pretrained, source, "segmenter")
    if getattr(model.config, "model_type", "") != "clipseg":
        raise ModelError(f"the segmenter '{source}' is a {model.config.model_type} model; set ELITE_SEGMENTER to a "
                         f"CLIPSeg model such as {DEFAULT_SEGMENTER}.")
    processor = load_pretrained(CLIPSegProcessor.from_pretrained, source, "segmenter's processor")
    model = model.to(device=resolved_device, dtype=resolved_dtype).eval().requires_grad_(False)
    segmenter = Segmenter(source=source, model=model, processor=processor, device=resolved_device,
                          dtype=resolved_dtype)
    _LOADED[key] = segmenter
    return segmenter


def forget_segmenters() -> None:
    """Drop the loaded segmenters, so the next load_segmenter loads again."""
    _LOADED.clear()


def object_probabilities(segmenter: Segmenter, image: Image.Image, object_text: str = DEFAULT_OBJECT) -> np.ndarray:
    """float32 [H, W] in the picture's size: how likely each pixel shows `object_text`.

    CLIPSeg sees the picture squashed to its input square; its map is stretched back to the
    picture's own size (bilinear), so a non-square picture keeps its proportions.
    """
    import torch
    import torch.nn.functional as F

    inputs = segmenter.processor(text=[object_text], images=[image.convert("RGB")], return_tensors="pt", padding=True)
    pixel_values = inputs["pixel_values"].to(device=segmenter.device, dtype=segmenter.dtype)
    with torch.no_grad():
        logits = segmenter.model(input_ids=inputs["input_ids"].to(segmenter.device),
                                 attention_mask=inputs["attention_mask"].to(segmenter.device),
                                 pixel_values=pixel_values).logits
    # One picture: the model squeezes its batch dimension away on some versions, not on others.
    logits = logits.reshape(-1, *logits.shape[-2:])[:1].float()
    width, height = image.size
    stretched = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return torch.sigmoid(stretched).cpu().numpy()


def auto_mask(segmenter: Segmenter, image: Image.Image, object_text: str = DEFAULT_OBJECT,
              threshold: float = AUTO_MASK_THRESHOLD) -> np.ndarray:
    """bool [H, W]: the pixels where the segmenter finds `object_text` with a probability above
    `threshold` (may be all False: the caller decides what no object means)."""
    return object_probabilities(segmenter, image, object_text) > threshold
