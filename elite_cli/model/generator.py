"""Prompts mentioning concepts -> images (ELITE_SPEC.md section 6, one batched UNet call per step).

Reads top to bottom like a diffusers pipeline: check_inputs, encode prompts, local injection,
prepare latents, then the denoising loop and decoding.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from elite_cli.model.attention import LocalInjection
from elite_cli.model.concept import Concept
from elite_cli.errors import InputError
from elite_cli.model.generation_limits import LAMBDA_RANGE, SCHEDULERS, check_scheduler
from elite_cli.model.loading import Models
from elite_cli.model.text import PromptEncoder, TokenizedPrompt

if TYPE_CHECKING:
    from elite_cli.model.modes import PreparedMode, StartingPoint

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
                        llambda: float) -> LocalInjection:
        """What the cross-attention layers get: the local tokens of the concepts in the prompts (none
        for prompts without concepts) and a place to keep the text's and tokens' projections over
        the steps of this call."""
        slots = max((len(prompt.slots) for prompt in tokenized), default=0)
        models = self.models
        rows = len(tokenized) if slots else 0
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
            projections={},
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
                       scheduler: str = "lms", progress: Callable[[int, int], None] | None = None,
                       mode: "PreparedMode | None" = None) -> list[Image.Image]:
        """One image per job, all denoised together; identical to generating each job alone.

        mode (elite_cli/model/modes.py): start from a picture (img2img), repaint its region
        (inpainting) and/or follow ControlNets; the steps below are diffusers' own for each."""
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
        unet = models.unet if mode is None or mode.inpaint_unet is None else mode.inpaint_unet
        controlnets = [control.controlnet for control in mode.controls] if mode is not None else []
        if mode is None:
            latents = self.prepare_latents(jobs, width, height, float(noise_scheduler.init_noise_sigma))
            start = None
        else:
            with models.using(models.vae):
                latents, start = self.prepare_start(jobs, width, height, noise_scheduler, mode, steps)
        with models.using(unet, *controlnets):
            latents = self._denoise(noise_scheduler, latents, context, injection, guided, guidance_scale, progress,
                                    unet, start, mode)
        with models.using(models.vae):
            return self.decode(latents)

    def prepare_start(self, jobs: Sequence[Job], width: int, height: int, noise_scheduler, mode: "PreparedMode",
                      steps: int) -> tuple[torch.Tensor, "StartingPoint"]:
        """The first latents of a call that starts from a picture or follows controls, drawn from
        each job's seed in the order diffusers' pipelines draw them from their generator: the
        picture's VAE sample, then the noise, then (9-channel inpainting) the masked picture's sample."""
        from elite_cli.model.modes import StartingPoint

        models = self.models
        vae, factor, device, dtype = models.vae, models.vae_scale_factor, models.device, models.dtype
        latent_dtype = self.latent_dtype  # float32 under a bfloat16 UNet (see latent_dtype)
        shape = (1, models.vae.config.latent_channels, height // factor, width // factor)
        start = StartingPoint(timesteps=noise_scheduler.timesteps)
        nine_channels = mode.inpaint_unet is not None
        if mode.source is not None:
            # diffusers' get_timesteps: only the last `strength` of the schedule is run.
            first = steps - min(int(steps * mode.strength), steps)
            start.timesteps = noise_scheduler.timesteps[first * noise_scheduler.order:]
            noise_scheduler.set_begin_index(first * noise_scheduler.order)
        from_noise_only = mode.source is None or (mode.is_inpainting and mode.strength == 1.0)
        needs_picture_latents = mode.source is not None and (not nine_channels or not from_noise_only)
        picture = masked = None
        if needs_picture_latents:
            picture = vae.encode(mode.source.to(device=device, dtype=dtype)).latent_dist
        if nine_channels:
            masked = vae.encode((mode.source * (mode.mask < 0.5)).to(device=device, dtype=dtype)).latent_dist
        picture_latents, noises, masked_latents = [], [], []
        for job in jobs:
            generator = torch.Generator("cpu").manual_seed(job.seed)
            if picture is not None:
                picture_latents.append((picture.sample(generator) * vae.config.scaling_factor).to(latent_dtype))
            noises.append(torch.randn(shape, generator=generator).to(device=device, dtype=latent_dtype))
            if masked is not None:
                masked_latents.append(masked.sample(generator) * vae.config.scaling_factor)
        start.noise = torch.cat(noises)
        if picture_latents:
            start.picture_latents = torch.cat(picture_latents)
            if mode.is_inpainting:
                # diffusers' inpainting repeats them per image, which makes them contiguous (img2img
                # keeps the VAE's channels-last strides); the decoder's rounding follows the strides.
                start.picture_latents = start.picture_latents.contiguous()
        if from_noise_only:
            latents = start.noise * noise_scheduler.init_noise_sigma
        else:
            first_timestep = start.timesteps[:1].repeat(len(jobs))
            latents = noise_scheduler.add_noise(start.picture_latents, start.noise, first_timestep)
        if mode.is_inpainting:
            mask = torch.nn.functional.interpolate(mode.mask, size=(height // factor, width // factor))
            start.mask = mask.to(device=device, dtype=latent_dtype).repeat(len(jobs), 1, 1, 1)
            start.blend = not nine_channels
        if masked_latents:
            # One job: its own tensor, as diffusers keeps it (torch.cat of one tensor would change its
            # channels-last strides, and the UNet's first convolution rounds by the strides).
            start.masked_latents = masked_latents[0] if len(masked_latents) == 1 else torch.cat(masked_latents)
        start.controls = [(control.controlnet, control.image.to(device=device, dtype=dtype).repeat(len(jobs), 1, 1, 1))
                          for control in mode.controls]
        return latents, start

    def _denoise(self, noise_scheduler, latents, context, injection, guided, guidance_scale, progress, unet=None,
                 start: "StartingPoint | None" = None, mode: "PreparedMode | None" = None):
        unet = unet if unet is not None else self.models.unet
        timesteps = noise_scheduler.timesteps if start is None else start.timesteps
        doubled = (lambda tensor: torch.cat([tensor, tensor]) if guided else tensor)
        extra_inputs = None
        if start is not None and start.masked_latents is not None:
            extra_inputs = [doubled(start.mask).to(self.models.dtype), doubled(start.masked_latents)]
        for step, timestep in enumerate(timesteps):
            # The UNet's input in its dtype, its output back in the latents' (float32 under bfloat16).
            model_input = noise_scheduler.scale_model_input(doubled(latents), timestep).to(self.models.dtype)
            residuals = {}
            if start is not None and start.controls:
                residuals = self.control_residuals(start.controls, model_input, timestep, context, doubled,
                                                   mode.control_scale)
            if extra_inputs is not None:
                model_input = torch.cat([model_input, *extra_inputs], dim=1)
            noise = unet(
                model_input, timestep, encoder_hidden_states=context,
                cross_attention_kwargs={"elite": injection}, **residuals,
            ).sample.to(latents.dtype)
            if guided:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = noise_scheduler.step(noise, timestep, latents).prev_sample
            if start is not None and start.blend:
                # diffusers' 4-channel inpainting: the known region is the picture, noised to the next step.
                known = start.picture_latents
                if step < len(timesteps) - 1:
                    known = noise_scheduler.add_noise(known, start.noise, torch.tensor([timesteps[step + 1]]))
                latents = (1 - start.mask) * known + start.mask * latents
            if progress is not None:
                progress(step + 1, len(timesteps))
        return latents

    @staticmethod
    def control_residuals(controls, model_input, timestep, context, doubled, scale: float) -> dict:
        """The ControlNets' residuals for the UNet's down and middle blocks (summed over several, as
        diffusers' MultiControlNetModel does). ControlNets keep their own attention: no elite kwargs."""
        down, middle = None, None
        for controlnet, image in controls:
            down_samples, middle_sample = controlnet(
                model_input, timestep, encoder_hidden_states=context, controlnet_cond=doubled(image),
                conditioning_scale=scale, guess_mode=False, return_dict=False,
            )
            if down is None:
                down, middle = list(down_samples), middle_sample
            else:
                down = [previous + sample for previous, sample in zip(down, down_samples)]
                middle = middle + middle_sample
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": middle}

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.models.vae
        images = []
        # One image at a time: VAE decoding at 512 px is the memory peak, and it is cheap.
        for index in range(len(latents)):
            # A slice, not latents[index][None]: the same strides as diffusers' batch of one (latents
            # that come from the VAE encoder are channels-last, and the kernels follow the strides).
            pixels = vae.decode((latents[index:index + 1] / vae.config.scaling_factor).to(vae.dtype)).sample
            pixels = (pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
            images.append(Image.fromarray((pixels * 255).round().astype("uint8")))
        return images
