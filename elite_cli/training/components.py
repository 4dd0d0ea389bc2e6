"""The frozen models a training run needs, and fresh mappers initialised from the UNet.

Unlike `elite_cli.model.loading.load_models` (generation: both mappers required, everything frozen
in one dtype), training loads the base model and image encoder without mappers, keeps the
trained mapper in float32 (the optimizer's master weights) and the frozen models in the
mixed-precision dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from elite_cli.errors import ModelError


@dataclass
class FrozenModels:
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    noise_scheduler: object  # DDPMScheduler with the base model's betas
    scheduler_config: dict

    @property
    def kv_shapes(self) -> dict[str, tuple[int, int]]:
        from elite_cli.model.attention import cross_attention_modules
        from elite_cli.model.mappers import module_key

        return {module_key(name): tuple(m.to_k.weight.shape) for name, m in cross_attention_modules(self.unet).items()}

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def clip_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    @property
    def grid(self) -> int:
        return self.clip_size // int(self.image_encoder.config.patch_size)


def load_frozen_models(base_model: str, image_encoder: str) -> FrozenModels:
    """Load on the CPU in float32; the loop moves and casts. Raises ModelError."""
    from diffusers import AutoencoderKL, DDPMScheduler, LMSDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    from elite_cli.model.generator import REFERENCE_SCHEDULER
    from elite_cli.model.loading import load_pretrained

    tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, base_model, "base model tokenizer", subfolder="tokenizer", kind="base_model")
    text_encoder = load_pretrained(CLIPTextModel.from_pretrained, base_model, "base model text encoder", subfolder="text_encoder", kind="base_model")
    unet = load_pretrained(UNet2DConditionModel.from_pretrained, base_model, "base model UNet", subfolder="unet", kind="base_model")
    vae = load_pretrained(AutoencoderKL.from_pretrained, base_model, "base model VAE", subfolder="vae", kind="base_model")
    vision = load_pretrained(CLIPVisionModel.from_pretrained, image_encoder, "image encoder", kind="image_encoder")
    if int(vision.config.num_hidden_layers) < 16:
        raise ModelError("the image encoder has fewer than 16 layers; ELITE reads hidden states 4, 8, 12 and 16 (use CLIP ViT-L/14).")
    try:
        scheduler_config = dict(LMSDiscreteScheduler.load_config(base_model, subfolder="scheduler"))
    except (OSError, ValueError, EnvironmentError):
        scheduler_config = dict(REFERENCE_SCHEDULER)
    # The reference trains with DDPM noise of the base model's betas (and its prediction type:
    # SD 2.x 768 predicts v).
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    for module in (text_encoder, unet, vae, vision):
        module.eval().requires_grad_(False)
    return FrozenModels(tokenizer, text_encoder, unet, vae, vision, noise_scheduler, scheduler_config)


def new_mapper(kind: str, frozen: FrozenModels, hidden_width: int):
    """A fresh GlobalMapper/LocalMapper whose key/value copies start as the UNet's own (float32)."""
    from elite_cli.model.attention import cross_attention_modules
    from elite_cli.model.mappers import GlobalMapper, LocalMapper, module_key

    cls = {"global": GlobalMapper, "local": LocalMapper}[kind]
    mapper = cls(int(frozen.image_encoder.config.hidden_size), hidden_width, int(frozen.text_encoder.config.hidden_size),
                 frozen.kv_shapes)
    with torch.no_grad():
        for name, module in cross_attention_modules(frozen.unet).items():
            to_k, to_v = mapper.key_value(module_key(name))
            to_k.weight.copy_(module.to_k.weight)
            to_v.weight.copy_(module.to_v.weight)
    return mapper.float()


def load_mapper(kind: str, path: str, frozen: FrozenModels, what: str):
    """A saved mapper (reference .pt or .safetensors) checked against the loaded models, float32."""
    from elite_cli.model.mappers import GlobalMapper, LocalMapper, check_against_unet, load_mapper_state

    cls = {"global": GlobalMapper, "local": LocalMapper}[kind]
    label = f"{what} '{path}'"
    mapper = cls.from_state_dict(load_mapper_state(path, what, role=kind), label)
    check_against_unet(mapper, frozen.kv_shapes, label)
    text_width = int(frozen.text_encoder.config.hidden_size)
    image_width = int(frozen.image_encoder.config.hidden_size)
    if mapper.text_width != text_width or mapper.image_width != image_width:
        raise ModelError(
            f"{label} maps {mapper.image_width}-wide image features to {mapper.text_width}-wide words but the models "
            f"need {image_width} and {text_width}; use a mapper trained with this base model and image encoder."
        )
    return mapper.float()
