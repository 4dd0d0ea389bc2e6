"""A tiny, random, offline stand-in for every model elite loads.

Same on-disk layouts as the real models (a diffusers Stable Diffusion folder, a transformers
CLIP vision folder, reference-layout `global_mapper.pt` / `local_mapper.pt`, a transformers
CLIPSeg folder with its processor for automatic masks), so tests and
`elite models tiny DIR` exercise exactly the loading code real users run. The CLIP tokenizer
is built from a small local BPE vocabulary (bytes plus a few merged words), so no download is
ever needed. Images generated with these models are noise; they prove the plumbing, not art.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elite_cli.errors import InputError

# Words that become single tokens; everything else splits into characters, which is what the
# placeholder-position tests need.
TINY_WORDS = ("a", "photo", "of", "the", "on", "in", "beach", "next", "to", "s", "cat", "dog", "red", "blue")
TINY_WIDTH = 32
MARKER = "elite-tiny.json"
# 2: the CLIPSeg segmenter joined the set.
TINY_VERSION = 2


@dataclass
class TinyModels:
    base_model: Path
    image_encoder: Path
    global_mapper: Path
    local_mapper: Path
    segmenter: Path


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def write_tiny_vocab(directory: Path) -> tuple[Path, Path]:
    """vocab.json + merges.txt of a CLIP-style BPE over bytes plus TINY_WORDS."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [symbol + "</w>" for symbol in symbols]
    merges: list[str] = []
    for word in TINY_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            line = f"{pieces[0]} {pieces[1]}"
            if line not in merges:
                merges.append(line)
                if merged not in vocab:
                    vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tiny_models(directory: str | Path, seed: int = 0) -> TinyModels:
    """Build (or reuse, if already built here) the tiny model set in `directory`."""
    if Path(directory).exists() and not Path(directory).is_dir():
        raise InputError(f"'{directory}' is a file; pass a folder for the tiny models (it is created if missing).")
    import torch
    import transformers.utils.logging as transformers_logging

    from elite_cli.model.loading import _disable_progress_bars

    # Importing the SD pipeline class makes transformers warn about optional image processors,
    # and saving draws progress bars: neither is for users.
    transformers_logging.set_verbosity_error()
    _disable_progress_bars()
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

    from elite_cli.model.attention import cross_attention_modules
    from elite_cli.model.mappers import GlobalMapper, LocalMapper, module_key

    directory = Path(directory)
    paths = TinyModels(directory / "stable-diffusion", directory / "clip-vision",
                       directory / "global_mapper.pt", directory / "local_mapper.pt", directory / "clipseg")
    marker = directory / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
        return paths

    torch.manual_seed(seed)
    vocab_file, merges_file = write_tiny_vocab(directory / "vocab")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=TINY_WIDTH,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=0.18215,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(paths.base_model)

    # 24 layers like ViT-L/14 (ELITE reads hidden states 4..16), 224 px input, patch 14 -> 16x16 grid.
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=24, num_attention_heads=4,
        image_size=224, patch_size=14, projection_dim=TINY_WIDTH,
    ))
    vision.save_pretrained(paths.image_encoder)

    kv_shapes = {module_key(name): tuple(module.to_k.weight.shape) for name, module in cross_attention_modules(unet).items()}
    for cls, path in ((GlobalMapper, paths.global_mapper), (LocalMapper, paths.local_mapper)):
        mapper = cls(TINY_WIDTH, 64, TINY_WIDTH, kv_shapes)
        # Plain dict of tensors, reference key layout, saved like the reference's torch.save.
        torch.save({name: tensor.clone() for name, tensor in mapper.state_dict().items()}, path)
    build_tiny_segmenter(paths.segmenter, tokenizer)
    marker.write_text(json.dumps({"version": TINY_VERSION}))
    return paths


def build_tiny_segmenter(directory: Path, tokenizer) -> None:
    """A random CLIPSeg in the layout of CIDAS/clipseg-rd64-refined (config.json, safetensors
    weights, preprocessor_config.json and the CLIP tokenizer files), 64 px input instead of 352.

    Its masks are random, like its weights, but deterministic: about 60% of a picture passes the
    automatic-mask threshold (a pattern of the random decoder), and its probabilities saturate at
    0 and 1, so that a threshold of 1.0 gives the empty mask the tests need.
    """
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    config = CLIPSegConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=64, patch_size=16),
        projection_dim=TINY_WIDTH, extract_layers=[1, 2], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, conditional_layer=0, use_complex_transposed_convolution=True,
    )
    model = CLIPSegForImageSegmentation(config).eval()
    model.save_pretrained(directory)
    image_processor = ViTImageProcessor(do_resize=True, size={"height": 64, "width": 64}, resample=2,
                                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
