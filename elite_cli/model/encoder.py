"""Picture (+ mask) -> Concept: one CLIP vision pass and the two mapping networks."""

from __future__ import annotations

import torch

from elite_cli.model.concept import Concept
from elite_cli.model.images import DEFAULT_CROP, PREPROCESSING_VERSION, ImageSource, clip_inputs, prepare_image
from elite_cli.model.loading import Models

# Which vision hidden states feed word i (ELITE_SPEC.md section 1): the encoder output first,
# so the primary word w0 comes from the deepest features.
FEATURE_LAYERS = ("last", 4, 8, 12, 16)


def select_features(output) -> list[torch.Tensor]:
    hidden = output.hidden_states
    return [output.last_hidden_state if layer == "last" else hidden[layer] for layer in FEATURE_LAYERS]


class Encoder:
    """Encodes concept pictures with loaded models: `Encoder(models).encode("cat.jpg", "cat_mask.png")`."""

    def __init__(self, models: Models):
        self.models = models

    @torch.no_grad()
    def encode(self, image: ImageSource, mask: ImageSource | None = None, crop: str = DEFAULT_CROP) -> Concept:
        """crop: how the picture is made square (elite_cli.model.images.CROP_MODES); recorded in the provenance."""
        models = self.models
        prepared = prepare_image(image, mask, crop)
        models.prepare_encoding()
        pixels, grid_mask = clip_inputs(prepared, models.image_size, models.grid)
        # float32 on the CPU even when generation runs in bfloat16 (Models.encoding_dtype).
        pixels = pixels.to(device=models.device, dtype=models.encoding_dtype)
        # One forward over [full image, object image].
        with models.using(models.image_encoder):
            output = models.image_encoder(pixel_values=pixels, output_hidden_states=True)
        features = select_features(output)
        words = models.global_mapper([level[:1] for level in features])[0]
        local = models.local_mapper([level[1:] for level in features])[0]
        flat_mask = grid_mask.reshape(-1, 1).to(device=local.device, dtype=local.dtype)
        provenance = models.provenance()
        provenance.update(image_sha256=prepared.image_sha256, mask_sha256=prepared.mask_sha256,
                          preprocessing=str(PREPROCESSING_VERSION), crop=prepared.crop,
                          mask_source=prepared.mask_source)
        return Concept(
            words=words.float().cpu(),
            local=(local * flat_mask).float().cpu(),
            mask=grid_mask.float().cpu(),
            provenance=provenance,
        )
