"""What to load: the model settings of one session, as a hashable value (the models' cache key).

Torch-free, so that settings can be resolved and mapper files checked before the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"


@dataclass(frozen=True)
class ModelSpec:
    base_model: str = DEFAULT_BASE_MODEL
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    global_mapper: str = ""
    local_mapper: str = ""
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"  # auto | sdpa | xformers | tiled
    # Keep the big models in CPU memory and move each to the GPU only while it runs.
    low_vram: bool = False
    # torch.compile the UNet (with the ELITE processors; they trace without graph breaks).
    compile: bool = False
    # Where the safetensors form of hf:// mapper checkpoints is kept (the library's models/hub).
    mapper_cache: str = ""
