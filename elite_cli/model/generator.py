"""Prompts mentioning concepts -> images (ELITE_SPEC.md section 6, one batched UNet call per step).

Reads top to bottom like a diffusers pipeline: check_inputs, encode prompts, local injection,
prepare latents, then the denoising loop and decoding.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from elite_cli.model.attention import LocalInjection
from elite_cli.model.concept import Concept
from elite_cli.errors import InputError
from elite_cli.model.generation_limits import LAMBDA_RANGE, SCHEDULERS, check_scheduler
from elite_cli.model.loading import Models
from elite_cli.model.text import PromptEncoder, TokenizedPrompt

# The reference's LMS set-up; also used when a base model ships no scheduler config.
REFERENCE_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def make_scheduler(name: str, base_config: Mapping | None = None):
    check_scheduler(name)
    import diffusers

    config = dict(base_config or REFERENCE_SCHEDULER)
    cls = getattr(diffusers, SCHEDULERS[name])
    if name == "lms":
        # Exactly the reference's constructor, with the base model's betas.
        return cls(**{key: config.get(key, value) for key, value in REFERENCE_SCHEDULER.items()})
    if name == "pndm":
        config["skip_prk_steps"] = True  # as StableDiffusionPipeline uses it
    return cls.from_config(config)


@dataclass(frozen=True)
class Job:
    """One image: its prompt, negative prompt and seed."""

    prompt: str
    seed: int
    negative_prompt: str = ""


class Generator:
    """`Generator(models).generate("<mycat> on the beach", {"mycat": concept}, seed=1)` -> list of PIL images."""

    def __init__(self, models: Models):
        self.models = models
        self.prompt_encoder = PromptEncoder(models.tokenizer, models.text_encoder)

    def generate(self, prompt: str, concepts: Mapping[str, Concept] | None = None, *, negative_prompt: str = "",
                 seed: int = 0, steps: int = 50, guidance_scale: float = 5.0, llambda: float = 0.8,
                 width: int = 512, height: int = 512, num_images: int = 1, scheduler: str = "lms",
                 progress: Callable[[int, int], None] | None = None) -> list[Image.Image]:
        """num_images images of one prompt; image i uses seed + i."""
        if num_images < 1:
            raise InputError(f"the number of images must be at least 1 but is {num_images}.")
        jobs = [Job(prompt, seed + index, negative_prompt) for index in range(num_images)]
        return self.generate_batch(jobs, concepts, steps=steps, guidance_scale=guidance_scale, llambda=llambda,
                                   width=width, height=height, scheduler=scheduler, progress=progress)

    # 1. inputs
    def check_inputs(self, jobs: Sequence[Job], concepts: Mapping[str, Concept], steps: int, width: int, height: int,
                     guidance_scale: float, llambda: float) -> None:
        factor = self.models.vae_scale_factor
        for label, value in (("width", width), ("height", height)):
            if value < factor or value % 8 or value % factor:
                raise InputError(f"`{label}` must be a positive multiple of 8 but is {value}.")
        if steps < 1:
            raise InputError(f"`steps` must be at least 1 but is {steps}.")
        if guidance_scale < 0:
            raise InputError(f"`guidance_scale` must be 0 or more but is {guidance_scale}.")
        low, high = LAMBDA_RANGE
        if not np.isfinite(llambda) or not low <= llambda <= high:
            raise InputError(f"`lambda` must be a number from {low:g} to {high:g} but is {llambda}.")
        if not jobs:
            raise InputError("nothing to generate: no prompts were given.")
        patches = self.models.grid ** 2
        for name, concept in concepts.items():
            if concept.text_width != self.models.text_width or concept.local.shape[0] != patches:
                raise InputError(
                    f"concept <{name}> has {concept.text_width}-wide words and {concept.local.shape[0]} local tokens, but "
                    f"the loaded models need {self.models.text_width} and {patches}; re-encode it with these models."
                )

    # 2. text
    def tokenize(self, jobs: Sequence[Job], concepts: Mapping[str, Concept]) -> list[TokenizedPrompt]:
        tokenized = [self.prompt_encoder.tokenize(job.prompt) for job in jobs]
        for prompt in tokenized:
            for _, name in prompt.slots:
                if name not in concepts:
                    close = difflib.get_close_matches(name, list(concepts), n=3)
                    hint = f" (did you mean {', '.join(f'<{c}>' for c in close)}?)" if close else ""
                    raise InputError(f"unknown concept <{name}>{hint}; add it with `elite add` or fix the prompt.")
        return tokenized

    # 3. local injection
    def local_injection(self, tokenized: list[TokenizedPrompt], concepts: Mapping[str, Concept], first_row: int,
                        llambda: float) -> LocalInjection | None:
        slots = max((len(prompt.slots) for prompt in tokenized), default=0)
        if slots == 0:
            return None
        models = self.models
        rows = len(tokenized)
        tokens = torch.zeros(rows, slots, models.grid ** 2, models.text_width, dtype=models.dtype)
        positions = torch.zeros(rows, slots, dtype=torch.long)
        weights = torch.zeros(rows, slots)
        for row, prompt in enumerate(tokenized):
            for slot, (position, name) in enumerate(prompt.slots):
                tokens[row, slot] = concepts[name].local.to(models.dtype)
                positions[row, slot] = position
                weights[row, slot] = 1.0
        return LocalInjection(
            rows=torch.arange(first_row, first_row + rows, device=models.device),
            tokens=tokens.to(models.device),
            positions=positions.to(models.device),
            weights=weights.to(models.device),
            llambda=float(llambda),
        )

    # 4. latents
    @property
    def latent_dtype(self) -> torch.dtype:
        """What the latents and the scheduler's arithmetic use: float32 when the UNet computes in
        bfloat16 (its 8-bit significand would round away a step's small update to a latent of
        norm ~1; the UNet's input is cast, its output cast back), the UNet's dtype otherwise (as
        diffusers' pipeline does, and as elite did before bfloat16)."""
        return torch.float32 if self.models.dtype == torch.bfloat16 else self.models.dtype

    def prepare_latents(self, jobs: Sequence[Job], width: int, height: int, init_sigma: float) -> torch.Tensor:
        """Seeded on a CPU generator per image, so a seed gives the same image on any device and batch."""
        factor = self.models.vae_scale_factor
        shape = (1, self.models.unet.config.in_channels, height // factor, width // factor)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(job.seed)) for job in jobs]
        latents = torch.cat(noise).to(device=self.models.device, dtype=self.latent_dtype)
        return latents * init_sigma

    @torch.no_grad()
    def generate_batch(self, jobs: Sequence[Job], concepts: Mapping[str, Concept] | None = None, *, steps: int = 50,
                       guidance_scale: float = 5.0, llambda: float = 0.8, width: int = 512, height: int = 512,
                       scheduler: str = "lms", progress: Callable[[int, int], None] | None = None) -> list[Image.Image]:
        """One image per job, all denoised together; identical to generating each job alone."""
        concepts = dict(concepts or {})
        models = self.models
        self.check_inputs(jobs, concepts, steps, width, height, guidance_scale, llambda)
        noise_scheduler = make_scheduler(scheduler, models.scheduler_config)
        tokenized = self.tokenize(jobs, concepts)

        words = {name: concept.primary_word for name, concept in concepts.items()}
        guided = guidance_scale > 1.0
        with models.using(models.text_encoder):
            conditional = self.prompt_encoder.encode(tokenized, words)
            if guided:
                # Unconditional (negative) branch first, conditional second, in ONE UNet batch;
                # only the conditional rows receive local tokens.
                unconditional = self.prompt_encoder.encode_plain([job.negative_prompt for job in jobs])
                context, first_conditional_row = torch.cat([unconditional, conditional]), len(jobs)
            else:
                context, first_conditional_row = conditional, 0
        context = context.to(device=models.device, dtype=models.dtype)
        injection = self.local_injection(tokenized, concepts, first_conditional_row, llambda)

        noise_scheduler.set_timesteps(steps)
        latents = self.prepare_latents(jobs, width, height, float(noise_scheduler.init_noise_sigma))
        with models.using(models.unet):
            latents = self._denoise(noise_scheduler, latents, context, injection, guided, guidance_scale, progress)
        with models.using(models.vae):
            return self.decode(latents)

    def _denoise(self, noise_scheduler, latents, context, injection, guided, guidance_scale, progress):
        models = self.models
        timesteps = noise_scheduler.timesteps
        for step, timestep in enumerate(timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = noise_scheduler.scale_model_input(model_input, timestep).to(models.dtype)
            noise = models.unet(
                model_input, timestep, encoder_hidden_states=context,
                cross_attention_kwargs={"elite": injection},
            ).sample.to(latents.dtype)
            if guided:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = noise_scheduler.step(noise, timestep, latents).prev_sample
            if progress is not None:
                progress(step + 1, len(timesteps))
        return latents

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.models.vae
        images = []
        # One image at a time: VAE decoding at 512 px is the memory peak, and it is cheap.
        for latent in latents:
            pixels = vae.decode((latent[None] / vae.config.scaling_factor).to(vae.dtype)).sample
            pixels = (pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
            images.append(Image.fromarray((pixels * 255).round().astype("uint8")))
        return images
