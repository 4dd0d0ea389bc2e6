"""Benchmark 1: how long `Encoder.encode(image, mask)` takes once the models are loaded.

End to end (PNG files in, Concept on the CPU out), then its parts, so a miss can be placed:
image preparation on the CPU, the one batched CLIP ViT-L/14 pass over [image, object image],
and the two mapping networks. Beside it, the automatic mask of the same picture (CLIPSeg,
`elite add` without a mask), as a ratio to the encode: issue 15 asks that on a GPU it adds at
most the encode's own time.

    python benchmarks/encode.py --real --device cuda --dtype float16   # figures (target: <= 15 ms on an H100)
    python benchmarks/encode.py --tiny                                 # CPU smoke, seconds
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

NAME = "encode"
DEFAULTS = {"real": harness.SizeDefaults(runs=100, warmup=10), "tiny": harness.SizeDefaults(runs=5, warmup=1)}
TARGET_SECONDS = 0.015
# CIDAS/clipseg-rd64-refined's config.json (CLIP ViT-B/16 and a 64-wide decoder); its processor
# resizes pictures to 352 px. Kept here rather than in real_sizes.json, whose hash decides when
# the (much larger) real-size set is rebuilt.
REAL_CLIPSEG = {
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
                    "vocab_size": 49408, "max_position_embeddings": 77},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "image_size": 224, "patch_size": 16},
    "projection_dim": 512, "extract_layers": [3, 6, 9], "reduce_dim": 64, "decoder_num_attention_heads": 4,
    "decoder_intermediate_size": 2048, "conditional_layer": 0, "use_complex_transposed_convolution": True,
}
REAL_CLIPSEG_SIZE = 352


def segmenter_folder(args) -> Path:
    """The segmenter for this size: the tiny set's CLIPSeg, or a real-size one with random weights
    (built once beside the real-size models, in the same layout as the hub model)."""
    if args.size == "tiny":
        from elite_cli.model.tiny import build_tiny_models

        return build_tiny_models(args.models_dir or harness.default_models_root() / "tiny").segmenter
    folder = (args.models_dir or harness.default_models_root() / "real") / "clipseg"
    if not (folder / "preprocessor_config.json").is_file():
        from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer, \
            ViTImageProcessor

        from elite_cli.model.tiny import write_tiny_vocab

        vocab, merges = write_tiny_vocab(folder / "vocab")
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
        CLIPSegForImageSegmentation(CLIPSegConfig(**REAL_CLIPSEG)).save_pretrained(folder)
        processor = ViTImageProcessor(size={"height": REAL_CLIPSEG_SIZE, "width": REAL_CLIPSEG_SIZE}, resample=2,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        CLIPSegProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(NAME, "Time Encoder.encode(image, mask) after the models are loaded.")
    parser.add_argument("--low-vram", action="store_true", help="load with low_vram (image encoder moved in per call)")
    args = harness.parse_arguments(parser, argv, DEFAULTS)
    harness.quiet_libraries()

    import torch

    from elite_cli.model.encoder import Encoder, select_features
    from elite_cli.model.images import clip_inputs, prepare_image
    from elite_cli.model.loading import load_models

    spec = harness.model_spec(args, low_vram=args.low_vram)
    models = load_models(spec)
    device = models.device
    encoder = Encoder(models)
    settings = {"runs": args.runs, "warmup": args.warmup, "dtype": str(models.dtype).replace("torch.", ""),
                "attention": models.backend, "low_vram": args.low_vram, "picture": "512x512 PNG + mask PNG"}

    with tempfile.TemporaryDirectory() as folder:
        image_path, mask_path = harness.sample_pictures(Path(folder))
        timing = dict(runs=args.runs, warmup=args.warmup, device=device)
        end_to_end = harness.measure(lambda: encoder.encode(image_path, mask_path), **timing)
        from PIL import Image

        decoded = Image.open(image_path).convert("RGB"), Image.open(mask_path).convert("L")
        from_memory = harness.measure(lambda: encoder.encode(*decoded), **timing)
        preparation = harness.measure(
            lambda: clip_inputs(prepare_image(image_path, mask_path), models.image_size, models.grid), **timing)

        pixels, _ = clip_inputs(prepare_image(image_path, mask_path), models.image_size, models.grid)
        pixels = pixels.to(device=device, dtype=models.encoding_dtype)

        @torch.no_grad()
        def clip_pass():
            with models.using(models.image_encoder):
                return models.image_encoder(pixel_values=pixels, output_hidden_states=True)

        clip = harness.measure(clip_pass, **timing)
        features = select_features(clip_pass())

        @torch.no_grad()
        def mappers():
            models.global_mapper([level[:1] for level in features])
            models.local_mapper([level[1:] for level in features])

        mapping = harness.measure(mappers, **timing)

        from elite_cli.model.segment import DEFAULT_OBJECT, auto_mask, load_segmenter

        segmenter = load_segmenter(str(segmenter_folder(args)), args.device, args.dtype)
        # From the file, like the end-to-end encode: what `elite add` does before encoding.
        automatic = harness.measure(
            lambda: auto_mask(segmenter, Image.open(image_path).convert("RGB"), DEFAULT_OBJECT), **timing)

    parts = [
        ("encode (end to end)", end_to_end),
        ("encode from decoded PIL images", from_memory),
        ("image preparation (CPU: decode, crop, resize, normalise)", preparation),
        ("CLIP vision pass, batch of 2", clip),
        ("global + local mappers", mapping),
        ("automatic mask (CLIPSeg, from the PNG file)", automatic),
    ]
    mask_ratio = automatic.median / end_to_end.median
    rows = [[label, harness.format_seconds(m.median), harness.format_seconds(min(m.times)), harness.format_bytes(m.peak_bytes)]
            for label, m in parts]
    harness.print_table(f"Encode ({args.size} models, {device}, {settings['dtype']}, median of {args.runs})",
                        ["measurement", "median", "min", "peak memory"], rows)
    print(f"automatic mask / encode (end to end): {mask_ratio:.2f}x")
    targets = [harness.target("encode median seconds (H100)", end_to_end.median, TARGET_SECONDS,
                              applies=harness.counts(args, device),
                              note="device: " + harness.environment(device)["device"]),
               harness.target("automatic mask / encode, median ratio (GPU)", mask_ratio, 1.0,
                              applies=harness.counts(args, device), note="issue 15: at most the encode's own time")]
    harness.print_targets(targets)
    payload = {
        "settings": settings,
        "results": {label: measurement.as_dict() for label, measurement in parts},
        "automatic_mask_over_encode": mask_ratio,
        "targets": targets,
    }
    payload["json_path"] = str(harness.write_json(NAME, args, payload, device))
    return payload


if __name__ == "__main__":
    main()
