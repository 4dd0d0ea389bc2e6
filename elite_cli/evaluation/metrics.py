"""CLIP-T, CLIP-I and DINO: the numbers customization papers report, computed as their references do.

- CLIP-T: cosine between the CLIP embedding of a generated image and of its prompt's text.
- CLIP-I: cosine between the CLIP image embeddings of a generated image and the source image.
- DINO: the same with DINO ViT-S/16 features (CLS token of the last layer).

As in Textual Inversion's `evaluation/clip_eval.py` (CLIP ViT-B/32 by default) every embedding
is L2-normalised first and a score is the mean of the cosines over all (reference, generated)
pairs, so one number per generated image is the mean over the references it is compared with.
Preprocessing is the references' torchvision pipelines re-stated in PIL (torchvision is not a
dependency): CLIP resizes the short side to the model's input size (bicubic), centre-crops and
normalises with CLIP's mean/std; DINO resizes the short side to 256/224 of the input size
(bicubic), centre-crops and normalises with ImageNet's mean/std. (PIL's bicubic resize is
antialiased, like `clip.load`'s own PIL preprocessing; Textual Inversion's tensor path resized
without antialiasing on older torchvision, so absolute numbers can differ slightly from its.)

Models come from transformers (`CLIPModel`, `ViTModel`) by hub id or folder; only their
towers and projections are called, which is the same on transformers 4 and 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from elite_cli.errors import ModelError
from elite_cli.evaluation import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINO's evaluation transform: Resize(256) then CenterCrop(224).
DINO_RESIZE_RATIO = 256 / 224


# ---- statistics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n - 1; None below two values) and count of some scores."""

    mean: float | None
    std: float | None
    count: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> "Summary":
        return cls(data.get("mean"), data.get("std"), int(data.get("count", 0)))


def summarize(values: Sequence[float]) -> Summary:
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return Summary(None, None, 0)
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return Summary(float(values.mean()), std, int(values.size))


# ---- cosine arithmetic -----------------------------------------------------------------------

def l2_normalize(features: "torch.Tensor") -> "torch.Tensor":
    """Rows scaled to unit length (float32), as the references do before every dot product."""
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosine_matrix(first: "torch.Tensor", second: "torch.Tensor") -> "torch.Tensor":
    """[A, D] x [B, D] -> [A, B] cosines."""
    return l2_normalize(first) @ l2_normalize(second).T


def mean_cosine_to_references(references: "torch.Tensor", generated: "torch.Tensor") -> "torch.Tensor":
    """One score per generated image: its mean cosine to every reference ([R, D], [N, D] -> [N]).

    The mean of these scores is the reference evaluators' `(refs @ gens.T).mean()`.
    """
    return cosine_matrix(references, generated).mean(dim=0)


def paired_cosine(first: "torch.Tensor", second: "torch.Tensor") -> "torch.Tensor":
    """Row i of `first` against row i of `second` ([N, D], [N, D] -> [N]); CLIP-T pairs each image with its prompt."""
    return (l2_normalize(first) * l2_normalize(second)).sum(dim=-1)


# ---- preprocessing (PIL re-statements of the reference transforms) ---------------------------

def resize_and_center_crop(image: Image.Image, resize_to: int, crop_to: int) -> Image.Image:
    """torchvision's Resize(resize_to, BICUBIC) + CenterCrop(crop_to) on a PIL image."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (resize_to, max(1, int(resize_to * height / width)))
    else:
        size = (max(1, int(resize_to * width / height)), resize_to)
    image = image.resize(size, Image.BICUBIC)
    width, height = image.size
    # torchvision rounds the crop offsets the same way.
    left = int(round((width - crop_to) / 2.0))
    top = int(round((height - crop_to) / 2.0))
    return image.crop((left, top, left + crop_to, top + crop_to))


def to_pixels(images: Sequence[Image.Image], resize_to: int, crop_to: int, mean, std) -> "torch.Tensor":
    """PIL images -> normalised [N, 3, crop, crop] float32 tensor."""
    import torch

    arrays = [np.asarray(resize_and_center_crop(image, resize_to, crop_to), dtype=np.float32) / 255.0 for image in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels - mean) / std


# ---- the metric models -----------------------------------------------------------------------

def _load(load, source: str, what: str, flag: str, **kwargs):
    """from_pretrained with every failure as one ModelError sentence naming the flag."""
    from elite_cli.model.loading import load_pretrained

    try:
        return load_pretrained(load, source, what, **kwargs)
    except ModelError as error:
        raise ModelError(f"{str(error).rstrip('.')}; the {what} is chosen with {flag}.") from None


class ClipScorer:
    """CLIP embeddings of images and texts (normalised), for CLIP-T and CLIP-I."""

    def __init__(self, model, tokenizer, device: "torch.device | str" = "cpu"):
        self.model = model.to(device).float().eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.image_size = int(model.config.vision_config.image_size)
        # The text window of the model (77 for every released CLIP).
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def load(cls, source: str = DEFAULT_CLIP_MODEL, device: "torch.device | str" = "cpu") -> "ClipScorer":
        from transformers import CLIPModel, CLIPTokenizer

        model = _load(CLIPModel.from_pretrained, source, "CLIP metric model", "--clip-model")
        tokenizer = _load(CLIPTokenizer.from_pretrained, source, "CLIP metric model tokenizer", "--clip-model")
        return cls(model, tokenizer, device)

    def pixels(self, images: Sequence[Image.Image]) -> "torch.Tensor":
        return to_pixels(images, self.image_size, self.image_size, CLIP_MEAN, CLIP_STD)

    def embed_images(self, images: Sequence[Image.Image]) -> "torch.Tensor":
        import torch

        with torch.no_grad():
            output = self.model.vision_model(pixel_values=self.pixels(images).to(self.device))
            return l2_normalize(self.model.visual_projection(output.pooler_output)).cpu()

    def embed_texts(self, texts: Sequence[str]) -> "torch.Tensor":
        import torch

        # Prompts longer than CLIP's window are cut, as `clip.tokenize(..., truncate=True)` would.
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            output = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device))
            return l2_normalize(self.model.text_projection(output.pooler_output)).cpu()


class DinoScorer:
    """DINO ViT features (CLS token of the last layer, after the final norm; normalised), for DINO."""

    def __init__(self, model, device: "torch.device | str" = "cpu"):
        self.model = model.to(device).float().eval().requires_grad_(False)
        self.device = device
        self.image_size = int(model.config.image_size)

    @classmethod
    def load(cls, source: str = DEFAULT_DINO_MODEL, device: "torch.device | str" = "cpu") -> "DinoScorer":
        from transformers import ViTModel

        # DINO's CLS token is the feature; the pooler (absent from the DINO checkpoints) is not.
        model = _load(ViTModel.from_pretrained, source, "DINO metric model", "--dino-model", add_pooling_layer=False)
        return cls(model, device)

    def pixels(self, images: Sequence[Image.Image]) -> "torch.Tensor":
        resize_to = int(math.floor(self.image_size * DINO_RESIZE_RATIO))
        return to_pixels(images, resize_to, self.image_size, IMAGENET_MEAN, IMAGENET_STD)

    def embed_images(self, images: Sequence[Image.Image]) -> "torch.Tensor":
        import torch

        with torch.no_grad():
            # ViTModel's last_hidden_state is already layer-normed, like DINO's `norm(x)[:, 0]`.
            output = self.model(pixel_values=self.pixels(images).to(self.device))
            return l2_normalize(output.last_hidden_state[:, 0]).cpu()


@dataclass
class MetricModels:
    clip: ClipScorer
    dino: DinoScorer
    clip_source: str
    dino_source: str


_CACHE: dict[tuple[str, str, str], MetricModels] = {}


def load_metric_models(clip_source: str = DEFAULT_CLIP_MODEL, dino_source: str = DEFAULT_DINO_MODEL,
                       device: "torch.device | str" = "cpu") -> MetricModels:
    """Both metric models, loaded once per process. Raises ModelError naming the flag to fix."""
    key = (clip_source, dino_source, str(device))
    if key not in _CACHE:
        _CACHE[key] = MetricModels(ClipScorer.load(clip_source, device), DinoScorer.load(dino_source, device),
                                   clip_source, dino_source)
    return _CACHE[key]
