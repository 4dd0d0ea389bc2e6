"""Encoding and generation end to end on the tiny models, against a re-statement of the reference loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from elite_cli.model.encoder import Encoder
from elite_cli.errors import InputError
from elite_cli.model.generator import Generator, Job
from elite_cli.model.images import clip_inputs, prepare_image

SIZE = dict(width=64, height=64, steps=3)


def picture(seed, size=(80, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def mask_for(size=(80, 64)):
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[10:50, 20:60] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def concepts(loaded_models):
    encoder = Encoder(loaded_models)
    return {
        "cat": encoder.encode(picture(1), mask_for()),
        "mug": encoder.encode(picture(2)),
    }


def as_array(image):
    return np.asarray(image).astype(np.int16)


# ---- encoder ---------------------------------------------------------------------------------

@torch.no_grad()
def test_encoder_matches_two_separate_reference_passes(loaded_models, concepts):
    m = loaded_models
    prepared = prepare_image(picture(1), mask_for())
    pixels, grid_mask = clip_inputs(prepared, 224, 16)

    def levels(pixel_values):  # the reference: last_hidden_state, then hidden_states[4, 8, 12, 16]
        out = m.image_encoder(pixel_values, output_hidden_states=True)
        return [out[0]] + [out[2][i] for i in (4, 8, 12, 16)]

    words = m.global_mapper(levels(pixels[:1]))[0]
    seg = F.interpolate(torch.from_numpy(prepared.mask.astype(np.float32))[None, None], (128, 128), mode="nearest")
    seg16 = F.interpolate(seg, (16, 16), mode="nearest")[:, 0].reshape(1, -1, 1)
    local = (m.local_mapper(levels(pixels[1:])) * seg16)[0]
    concept = concepts["cat"]
    assert (concept.words - words).abs().max() < 1e-5
    assert (concept.local - local).abs().max() < 1e-5
    assert concept.words.shape == (5, m.text_width) and concept.local.shape == (256, m.text_width)
    assert torch.equal(concept.mask.reshape(-1), seg16.reshape(-1))
    assert 0 < concept.mask.sum() < 256  # the mask zeroes background tokens
    assert concept.local[concept.mask.reshape(-1) == 0].abs().max() == 0
    assert concept.provenance["global_mapper"] == m.global_fingerprint


# ---- the reference loop, re-stated ----------------------------------------------------------

class ReferenceCrossAttention:
    """inj_forward_crossattention of the reference: explicit matmuls, batch of one."""

    def __init__(self, to_k_global, to_v_global, to_k_local, to_v_local):
        self.kg, self.vg, self.kl, self.vl = to_k_global, to_v_global, to_k_local, to_v_local

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, ref=None):
        h = attn.heads

        def to_heads(t):
            b, n, d = t.shape
            return t.reshape(b, n, h, d // h).permute(0, 2, 1, 3).reshape(b * h, n, d // h)

        query = to_heads(attn.to_q(hidden_states))
        key = to_heads(self.kg(encoder_hidden_states))
        value = to_heads(self.vg(encoder_hidden_states))
        probs = (torch.matmul(query, key.transpose(-1, -2)) * attn.scale).softmax(dim=-1)
        out = torch.matmul(probs, value)
        if ref is not None:
            key_local, value_local = to_heads(self.kl(ref["local"])), to_heads(self.vl(ref["local"]))
            probs_local = (torch.matmul(query, key_local.transpose(-1, -2)) * attn.scale).softmax(dim=-1)
            column = probs[:, :, ref["index"]]
            column = column.unsqueeze(2) / column.max()
            out = out + torch.matmul(probs_local * column * ref["lambda"], value_local)
        b = hidden_states.shape[0]
        out = out.reshape(b, h, -1, out.shape[-1]).permute(0, 2, 1, 3).reshape(b, -1, h * out.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class PlainSelfAttention:
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, ref=None):
        from diffusers.models.attention_processor import AttnProcessor

        return AttnProcessor()(attn, hidden_states)


@torch.no_grad()
def reference_generate(m, concept, seed, steps, guidance, llambda, size):
    from diffusers import LMSDiscreteScheduler

    from elite_cli.model.mappers import module_key

    scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    tokenizer, text_encoder, unet = m.tokenizer, m.text_encoder, m.unet
    ids = tokenizer(["a photo of a S"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    index = 5
    embedding = text_encoder.get_input_embeddings()
    saved_row = embedding.weight[ids[0, index]].clone()
    embedding.weight[ids[0, index]] = concept.words[0]  # "S" appears once: same as injecting at its index
    try:
        conditional = text_encoder(ids)[0]
    finally:
        embedding.weight[ids[0, index]] = saved_row
    unconditional = text_encoder(tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    saved = unet.attn_processors
    processors = {}
    for name in saved:
        path = name.rsplit(".processor", 1)[0]
        if path.endswith("attn2"):
            key = module_key(path)
            processors[name] = ReferenceCrossAttention(*m.global_mapper.key_value(key), *m.local_mapper.key_value(key))
        else:
            processors[name] = PlainSelfAttention()
    unet.set_attn_processor(processors)
    try:
        latents = torch.randn((1, 4, size // 8, size // 8), generator=torch.manual_seed(seed))
        scheduler.set_timesteps(steps)
        latents = latents * scheduler.init_noise_sigma
        local = concept.local[None]
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            text = unet(model_input, t, encoder_hidden_states=conditional,
                        cross_attention_kwargs={"ref": {"local": local, "index": index, "lambda": llambda}}).sample
            uncond = unet(model_input, t, encoder_hidden_states=unconditional, cross_attention_kwargs={"ref": None}).sample
            latents = scheduler.step(uncond + guidance * (text - uncond), t, latents).prev_sample
        image = m.vae.decode(1 / 0.18215 * latents).sample
    finally:
        unet.set_attn_processor(saved)
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (image[0] * 255).round().astype("uint8"), latents


def test_generation_matches_the_reference_loop(loaded_models, concepts):
    generator = Generator(loaded_models)
    ours = generator.generate("a photo of a <cat>", concepts, seed=7, guidance_scale=5.0, llambda=0.8, scheduler="lms", **SIZE)[0]
    reference, _ = reference_generate(loaded_models, concepts["cat"], seed=7, steps=3, guidance=5.0, llambda=0.8, size=64)
    assert np.asarray(ours).std() > 5  # not a blank image
    assert np.abs(as_array(ours) - reference.astype(np.int16)).max() <= 1
    # And the comparison can fail: a different lambda gives another image.
    other, _ = reference_generate(loaded_models, concepts["cat"], seed=7, steps=3, guidance=5.0, llambda=3.0, size=64)
    assert np.abs(as_array(ours) - other.astype(np.int16)).max() > 2


# ---- behaviour -------------------------------------------------------------------------------

def test_same_seed_same_image_other_seed_other_image(loaded_models, concepts):
    generator = Generator(loaded_models)
    a = generator.generate("<cat> on the beach", concepts, seed=3, **SIZE)[0]
    b = generator.generate("<cat> on the beach", concepts, seed=3, **SIZE)[0]
    c = generator.generate("<cat> on the beach", concepts, seed=4, **SIZE)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_batch_equals_one_by_one(loaded_models, concepts):
    generator = Generator(loaded_models)
    jobs = [Job("<cat> on the beach", 11), Job("<mug> next to <cat>", 12, "blue"), Job("a red dog", 13)]
    together = generator.generate_batch(jobs, concepts, **SIZE)
    for job, image in zip(jobs, together):
        alone = generator.generate_batch([job], concepts, **SIZE)[0]
        assert np.abs(as_array(image) - as_array(alone)).max() <= 1
    # num_images uses seed + i
    two = generator.generate("<cat> on the beach", concepts, seed=11, num_images=2, **SIZE)
    assert np.abs(as_array(two[0]) - as_array(together[0])).max() <= 1


def test_lambda_zero_ignores_local_tokens(loaded_models, concepts):
    generator = Generator(loaded_models)
    cat = concepts["cat"]
    scrambled = type(cat)(words=cat.words, local=torch.randn_like(cat.local) * 5, mask=cat.mask)
    zero_a = generator.generate("<cat> on the beach", {"cat": cat}, seed=5, llambda=0.0, **SIZE)[0]
    zero_b = generator.generate("<cat> on the beach", {"cat": scrambled}, seed=5, llambda=0.0, **SIZE)[0]
    assert np.array_equal(np.asarray(zero_a), np.asarray(zero_b))
    full_a = generator.generate("<cat> on the beach", {"cat": cat}, seed=5, llambda=2.0, **SIZE)[0]
    full_b = generator.generate("<cat> on the beach", {"cat": scrambled}, seed=5, llambda=2.0, **SIZE)[0]
    assert not np.array_equal(np.asarray(full_a), np.asarray(full_b))


def test_unconditional_rows_get_no_local_tokens(loaded_models, concepts):
    generator = Generator(loaded_models)
    tokenized = generator.tokenize([Job("<cat> and <mug>", 1), Job("<cat>", 2)], concepts)
    injection = generator.local_injection(tokenized, concepts, first_row=2, llambda=0.8)
    assert injection.rows.tolist() == [2, 3]  # the conditional half of a [uncond, uncond, cond, cond] batch
    assert injection.weights.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert injection.positions[0].tolist() == [slot[0] for slot in tokenized[0].slots]


def test_two_concepts_differ_from_either_alone(loaded_models, concepts):
    generator = Generator(loaded_models)
    both = generator.generate("<cat> next to <mug>", concepts, seed=9, llambda=2.0, **SIZE)[0]
    cat_twice = generator.generate("<cat> next to <cat>", concepts, seed=9, llambda=2.0, **SIZE)[0]
    mug_twice = generator.generate("<mug> next to <mug>", concepts, seed=9, llambda=2.0, **SIZE)[0]
    assert not np.array_equal(np.asarray(both), np.asarray(cat_twice))
    assert not np.array_equal(np.asarray(both), np.asarray(mug_twice))


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler", "dpm++"])
def test_every_scheduler_runs(loaded_models, concepts, scheduler):
    image = Generator(loaded_models).generate("<cat>", concepts, seed=1, scheduler=scheduler, **SIZE)[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="<dog> on the beach"), "unknown concept <dog>"),
        (dict(prompt="<cta> on the beach"), "did you mean <cat>"),
        (dict(width=60), "`width` must be a positive multiple of 8 but is 60"),
        (dict(height=0), "`height` must be a positive multiple of 8 but is 0"),
        (dict(steps=0), "`steps` must be at least 1"),
        (dict(scheduler="heun"), "--scheduler 'heun' is not supported"),
        (dict(num_images=0), "number of images must be at least 1"),
    ],
)
def test_bad_generation_arguments(loaded_models, concepts, kwargs, message):
    arguments = dict(prompt="<cat>", seed=0, width=64, height=64, steps=2)
    arguments.update(kwargs)
    prompt = arguments.pop("prompt")
    with pytest.raises(InputError) as error:
        Generator(loaded_models).generate(prompt, concepts, **arguments)
    assert message in str(error.value)


def test_low_vram_mode_gives_the_same_image(tiny_spec, loaded_models, concepts):
    import dataclasses

    from elite_cli.model.loading import load_models

    offloaded = load_models(dataclasses.replace(tiny_spec, low_vram=True))
    assert offloaded is not loaded_models
    a = Generator(loaded_models).generate("<cat> on the beach", concepts, seed=2, **SIZE)[0]
    b = Generator(offloaded).generate("<cat> on the beach", concepts, seed=2, **SIZE)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert next(offloaded.unet.parameters()).device.type == "cpu"  # back in CPU memory after use


@torch.no_grad()
def test_unet_with_elite_processors_compiles_without_graph_breaks(loaded_models, concepts):
    """fullgraph=True raises on any graph break; the eager backend keeps this fast on CPU."""
    generator = Generator(loaded_models)
    tokenized = generator.tokenize([Job("<cat> next to <mug>", 1)], concepts)
    injection = generator.local_injection(tokenized, concepts, first_row=1, llambda=0.8)
    torch.manual_seed(0)
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, loaded_models.text_width)
    compiled = torch.compile(loaded_models.unet, backend="eager", fullgraph=True)
    kwargs = dict(encoder_hidden_states=context, cross_attention_kwargs={"elite": injection})
    out = compiled(latents, 10, **kwargs).sample
    assert torch.allclose(out, loaded_models.unet(latents, 10, **kwargs).sample, atol=1e-5)
