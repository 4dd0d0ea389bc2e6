"""Validation images: the first few training pictures, encoded by the mappers being trained and
generated with the core Generator (so what is checked is what `elite gen` will do).

The global stage has no local mapper yet: its concepts carry zero local tokens and generate
with lambda 0, i.e. from the words alone. The local stage uses lambda 0.8 (the reference's
inference default).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from elite_cli.model.concept import Concept
from elite_cli.model.encoder import select_features
from elite_cli.model.images import clip_inputs, prepare_image
from elite_cli.training.data import GLOBAL_PADDING, BadSample, decode_sample, padded_crop

LOCAL_LAMBDA = 0.8


@torch.no_grad()
def encode(trainer, crop: Image.Image, mask: Image.Image) -> Concept:
    frozen = trainer.frozen
    prepared = prepare_image(crop, mask)
    pixels, grid_mask = clip_inputs(prepared, frozen.clip_size, frozen.grid)
    output = frozen.image_encoder(pixel_values=pixels.to(trainer.device, trainer.weight_dtype), output_hidden_states=True)
    features = select_features(output)
    if trainer.config.stage == "global":
        words = trainer.raw_mapper([level[:1] for level in features])[0]
        local = torch.zeros(frozen.grid ** 2, words.shape[-1])
    else:
        words = trainer.global_mapper([level[:1] for level in features])[0]
        local = trainer.raw_mapper([level[1:] for level in features])[0] * grid_mask.reshape(-1, 1).to(trainer.device)
    return Concept(words=words.float().cpu(), local=local.float().cpu(), mask=grid_mask.float())


def validation_grid(trainer, step: int) -> Image.Image:
    from elite_cli.model.generator import Generator
    from elite_cli.model.loading import Models, ModelSpec

    config, frozen = trainer.config, trainer.frozen
    # The generator only uses the mappers through the UNet's processors; these fields just
    # complete the Models record.
    global_mapper = trainer.global_mapper if config.stage == "local" else trainer.raw_mapper
    models = Models(
        spec=ModelSpec(base_model=config.base_model, image_encoder=config.image_encoder, device=str(trainer.device)),
        device=trainer.device, dtype=trainer.weight_dtype, backend=trainer.backend, tokenizer=frozen.tokenizer,
        text_encoder=frozen.text_encoder, unet=frozen.unet, vae=frozen.vae,
        image_encoder_config=frozen.image_encoder.config, global_mapper=global_mapper, local_mapper=trainer.raw_mapper,
        global_fingerprint="", local_fingerprint="", scheduler_config=frozen.scheduler_config,
        _image_encoder=frozen.image_encoder,
    )
    generator = Generator(models)
    size = config.resolution
    rows = []
    for sample in trainer.samples[: config.validation_count]:
        try:
            image, mask, box = decode_sample(sample)
        except BadSample:
            continue
        left, top, right, bottom = padded_crop(box, GLOBAL_PADDING, mask.shape[1], mask.shape[0])
        crop = Image.fromarray(image[top:bottom, left:right])
        crop_mask = Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255)
        concept = encode(trainer, crop, crop_mask)
        generated = generator.generate(
            config.validation_prompt, {"concept": concept}, seed=config.seed, steps=config.validation_steps,
            llambda=LOCAL_LAMBDA if config.stage == "local" else 0.0, width=size, height=size,
        )[0]
        rows.append(np.concatenate([np.asarray(crop.resize((size, size), Image.BICUBIC)), np.asarray(generated)], axis=1))
    if not rows:
        return Image.new("RGB", (2 * size, size))
    return Image.fromarray(np.concatenate(rows, axis=0))
