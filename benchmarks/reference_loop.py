"""The reference ELITE inference loop, re-stated for timing (ELITE_SPEC.md sections 5 and 6).

What makes the reference slow, kept on purpose:
- two UNet calls per denoising step: the conditional one with local tokens, then the
  unconditional one with the empty prompt;
- attention computed with explicit matrices (q k^T, softmax, times v) in every layer, self-
  and cross-attention alike, as the reference's patched CrossAttention does on diffusers 0.11.
What is not kept: its batch of one. Rows of a batch are denoised together (the placeholder
column is normalised per sample, as elite does), which can only make this baseline faster.

The math is ELITE's, so at batch 1 the images match elite's up to floating-point rounding;
generate.py checks that, so a fast elite cannot be fast by computing something else.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class ReferenceInjection:
    local: torch.Tensor  # [B, P, Dt] local tokens
    index: int  # the placeholder's token position
    llambda: float


class ReferenceCrossAttention:
    """The reference's injected cross-attention forward: explicit matmuls, global and local K/V copies."""

    def __init__(self, to_k_global, to_v_global, to_k_local, to_v_local):
        self.to_k_global, self.to_v_global = to_k_global, to_v_global
        self.to_k_local, self.to_v_local = to_k_local, to_v_local

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, ref=None):
        heads = attn.heads
        batch = hidden_states.shape[0]

        def to_heads(tensor):
            rows, length, width = tensor.shape
            return tensor.reshape(rows, length, heads, width // heads).permute(0, 2, 1, 3).reshape(rows * heads, length, width // heads)

        query = to_heads(attn.to_q(hidden_states))
        key = to_heads(self.to_k_global(encoder_hidden_states))
        value = to_heads(self.to_v_global(encoder_hidden_states))
        probs = (torch.matmul(query, key.transpose(-1, -2)) * attn.scale).softmax(dim=-1)
        out = torch.matmul(probs, value)
        if ref is not None:
            local = ref.local.to(device=hidden_states.device, dtype=hidden_states.dtype)
            key_local, value_local = to_heads(self.to_k_local(local)), to_heads(self.to_v_local(local))
            probs_local = (torch.matmul(query, key_local.transpose(-1, -2)) * attn.scale).softmax(dim=-1)
            column = probs[:, :, ref.index]  # [B*heads, N]
            per_sample_max = column.reshape(batch, -1).amax(dim=1).repeat_interleave(heads)
            column = column / per_sample_max[:, None]
            out = out + torch.matmul(probs_local * column.unsqueeze(-1) * ref.llambda, value_local)
        out = out.reshape(batch, heads, -1, out.shape[-1]).permute(0, 2, 1, 3).reshape(batch, -1, heads * out.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class ExplicitSelfAttention:
    """Self-attention through diffusers' classic AttnProcessor (baddbmm + softmax), as in diffusers 0.11."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor

        self.processor = AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, ref=None):
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@contextmanager
def reference_processors(models):
    """Swap the UNet's ELITE processors for the reference's during the block."""
    from elite_cli.model.mappers import module_key

    unet = models.unet
    saved = unet.attn_processors
    processors = {}
    for name in saved:
        path = name.rsplit(".processor", 1)[0]
        if path.endswith("attn2"):
            key = module_key(path)
            processors[name] = ReferenceCrossAttention(*models.global_mapper.key_value(key), *models.local_mapper.key_value(key))
        else:
            processors[name] = ExplicitSelfAttention()
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


class ReferenceLoop:
    """`ReferenceLoop(models).generate("a photo of a <x>", "x", concept, seeds=[0])` -> list of PIL images."""

    def __init__(self, models):
        from elite_cli.model.text import PromptEncoder

        self.models = models
        self.prompt_encoder = PromptEncoder(models.tokenizer, models.text_encoder)

    @torch.no_grad()
    def generate(self, prompt: str, name: str, concept, *, seeds: list[int], steps: int, guidance_scale: float,
                 llambda: float, width: int, height: int):
        from elite_cli.model.generator import Generator, Job, make_scheduler

        models = self.models
        tokenized = self.prompt_encoder.tokenize(prompt)
        if len(tokenized.slots) != 1:
            raise ValueError(f"the reference loop takes exactly one placeholder but {prompt!r} has {len(tokenized.slots)}.")
        index = tokenized.slots[0][0]
        batch = len(seeds)
        conditional = self.prompt_encoder.encode([tokenized] * batch, {name: concept.primary_word})
        unconditional = self.prompt_encoder.encode_plain([""] * batch)
        conditional = conditional.to(device=models.device, dtype=models.dtype)
        unconditional = unconditional.to(device=models.device, dtype=models.dtype)
        # On the device once, not once per layer and step: the baseline should not pay for copies.
        local = concept.local[None].expand(batch, -1, -1).to(device=models.device, dtype=models.dtype)
        injection = ReferenceInjection(local, index, float(llambda))

        scheduler = make_scheduler("lms", models.scheduler_config)
        scheduler.set_timesteps(steps)
        generator = Generator(models)  # only for its seeding and decoding, shared with elite on purpose
        latents = generator.prepare_latents([Job(prompt, seed) for seed in seeds], width, height,
                                            float(scheduler.init_noise_sigma))
        with reference_processors(models):
            for timestep in scheduler.timesteps:
                model_input = scheduler.scale_model_input(latents, timestep)
                text = models.unet(model_input, timestep, encoder_hidden_states=conditional,
                                   cross_attention_kwargs={"ref": injection}).sample
                uncond = models.unet(model_input, timestep, encoder_hidden_states=unconditional,
                                     cross_attention_kwargs={"ref": None}).sample
                latents = scheduler.step(uncond + guidance_scale * (text - uncond), timestep, latents).prev_sample
        return generator.decode(latents)
