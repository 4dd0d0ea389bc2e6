"""Benchmark 1: how long `Encoder.encode(image, mask)` takes once the models are loaded.

End to end (PNG files in, Concept on the CPU out), then its parts, so a miss can be placed:
image preparation on the CPU, the one batched CLIP ViT-L/14 pass over [image, object image],
and the two mapping networks.

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


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(NAME, "Time Encoder.encode(image, mask) after the models are loaded.")
    parser.add_argument("--low-vram", action="store_true", help="load with low_vram (image encoder moved in per call)")
    args = harness.parse_arguments(parser, argv, DEFAULTS)
    harness.quiet_libraries()

    import torch

    from elite_cli.encoder import Encoder, select_features
    from elite_cli.images import clip_inputs, prepare_image
    from elite_cli.models import load_models

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
        pixels = pixels.to(device=device, dtype=models.dtype)

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

    parts = [
        ("encode (end to end)", end_to_end),
        ("encode from decoded PIL images", from_memory),
        ("image preparation (CPU: decode, crop, resize, normalise)", preparation),
        ("CLIP vision pass, batch of 2", clip),
        ("global + local mappers", mapping),
    ]
    rows = [[label, harness.format_seconds(m.median), harness.format_seconds(min(m.times)), harness.format_bytes(m.peak_bytes)]
            for label, m in parts]
    harness.print_table(f"Encode ({args.size} models, {device}, {settings['dtype']}, median of {args.runs})",
                        ["measurement", "median", "min", "peak memory"], rows)
    targets = [harness.target("encode median seconds (H100)", end_to_end.median, TARGET_SECONDS,
                              applies=harness.counts(args, device),
                              note="device: " + harness.environment(device)["device"])]
    harness.print_targets(targets)
    payload = {
        "settings": settings,
        "results": {label: measurement.as_dict() for label, measurement in parts},
        "targets": targets,
    }
    payload["json_path"] = str(harness.write_json(NAME, args, payload, device))
    return payload


if __name__ == "__main__":
    main()
