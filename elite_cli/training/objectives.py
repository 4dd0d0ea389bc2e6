"""The two training losses (ELITE_SPEC.md section 7), one micro-batch at a time.

Global stage: the five words replace the placeholder and the four slots inserted after it;
loss = MSE(prediction, target) + reg * mean|words| (reg 0.01).
Local stage: w0 of the frozen global mapper replaces the placeholder; the local mapper's
masked tokens are injected into every cross-attention layer with lambda 1 (the reference
trains without a lambda); loss = masked MSE + reg * mean over layers of mean|v_L| (reg 1e-4).
The masked MSE is the reference's: squared error times the valid-region mask, summed over
channels and pixels, divided by the number of valid latent pixels (so it is the per-element
masked mean times the number of latent channels), averaged over the batch.

The target is the noise, or the velocity for v-prediction base models (SD 2.x 768).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from elite_cli.model.attention import LocalInjection
from elite_cli.model.concept import NUM_WORDS
from elite_cli.model.encoder import select_features
from elite_cli.model.text import PromptEncoder
from elite_cli.training.components import FrozenModels


@dataclass
class LossTerms:
    loss: torch.Tensor
    mse: torch.Tensor
    regularization: torch.Tensor


def per_row_normal(generators: list[torch.Generator], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """One standard-normal draw of `shape` per batch row, each from that row's CPU generator.

    Per row, so that a sample gets the same draws whatever the number of processes or the
    per-process batch (two processes of batch 1 train exactly like one process of batch 2),
    and on any device.
    """
    return torch.stack([torch.randn(shape, generator=generator) for generator in generators]).to(like.device, like.dtype)


class Objective:
    """Shared steps: latents of the target, noise, CLIP features, the diffusion target."""

    def __init__(self, frozen: FrozenModels, mapper, regularization: float, weight_dtype: torch.dtype,
                 device: torch.device):
        self.frozen, self.mapper = frozen, mapper
        self.regularization = regularization
        self.weight_dtype, self.device = weight_dtype, device
        self.prompts = PromptEncoder(frozen.tokenizer, frozen.text_encoder)

    @torch.no_grad()
    def noisy_latents(self, pixels: torch.Tensor, generators: list[torch.Generator]):
        vae = self.frozen.vae
        posterior = vae.encode(pixels.to(self.device, self.weight_dtype)).latent_dist
        mean = posterior.mean
        latents = (mean + posterior.std * per_row_normal(generators, mean.shape[1:], mean)) * vae.config.scaling_factor
        scheduler = self.frozen.noise_scheduler
        noise = per_row_normal(generators, latents.shape[1:], latents)
        steps = int(scheduler.config.num_train_timesteps)
        timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return noisy, timesteps, target

    @torch.no_grad()
    def features(self, clip_pixels: torch.Tensor) -> list[torch.Tensor]:
        output = self.frozen.image_encoder(pixel_values=clip_pixels.to(self.device, self.weight_dtype),
                                           output_hidden_states=True)
        return [level.detach() for level in select_features(output)]

    def predict(self, noisy, timesteps, context, injection=None) -> torch.Tensor:
        return self.frozen.unet(noisy, timesteps, encoder_hidden_states=context,
                                cross_attention_kwargs={"elite": injection}).sample


class GlobalObjective(Objective):
    def __call__(self, batch: dict, generators: list[torch.Generator]) -> LossTerms:
        noisy, timesteps, target = self.noisy_latents(batch["pixels"], generators)
        words = self.mapper(self.features(batch["clip_pixels"]))  # [B, 5, Dt]
        positions = batch["position"].tolist()
        replacements = [(row, position + i, words[row, i]) for row, position in enumerate(positions) for i in range(NUM_WORDS)]
        context = self.prompts.encode_ids(batch["input_ids"].to(self.device), replacements)
        prediction = self.predict(noisy, timesteps, context)
        mse = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        regularization = words.abs().mean() * self.regularization
        return LossTerms(mse + regularization, mse.detach(), regularization.detach())


class LocalObjective(Objective):
    def __init__(self, frozen: FrozenModels, mapper, global_mapper, regularization: float, weight_dtype: torch.dtype,
                 device: torch.device):
        super().__init__(frozen, mapper, regularization, weight_dtype, device)
        self.global_mapper = global_mapper

    def __call__(self, batch: dict, generators: list[torch.Generator]) -> LossTerms:
        noisy, timesteps, target = self.noisy_latents(batch["pixels"], generators)
        positions = batch["position"].to(self.device)
        with torch.no_grad():
            words = self.global_mapper(self.features(batch["clip_pixels"]))[:, 0]
            replacements = [(row, int(position), words[row]) for row, position in enumerate(positions.tolist())]
            context = self.prompts.encode_ids(batch["input_ids"].to(self.device), replacements)
        grid = self.frozen.grid
        grid_mask = F.interpolate(batch["object_mask"].to(self.device), size=(grid, grid), mode="nearest")
        tokens = self.mapper(self.features(batch["object_pixels"])) * grid_mask.reshape(grid_mask.shape[0], -1, 1)
        values: list[torch.Tensor] = []
        rows = tokens.shape[0]
        injection = LocalInjection(
            rows=torch.arange(rows, device=self.device), tokens=tokens[:, None], positions=positions[:, None],
            weights=torch.ones(rows, 1, device=self.device), llambda=1.0, local_values=values,
        )
        prediction = self.predict(noisy, timesteps, context, injection)
        valid = batch["valid"].to(self.device, torch.float32)
        squared = F.mse_loss(prediction.float(), target.float(), reduction="none") * valid
        mse = (squared.sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3)).clamp_min(1.0)).mean()
        regularization = torch.stack([value.float().abs().mean() for value in values]).mean() * self.regularization
        return LossTerms(mse + regularization, mse.detach(), regularization.detach())
