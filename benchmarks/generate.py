"""Benchmark 2: generation time and peak memory, side by side in one process.

(a) plain diffusers StableDiffusionPipeline from the same base folder, same attention kernel,
    same LMS scheduler, no concept;
(b) elite with one concept (Generator.generate, the path `elite gen` runs);
(c) the reference loop re-stated (reference_loop.py): two UNet calls per step, explicit
    attention matrices;
(d) with --low-vram: elite loaded with low_vram (model CPU offload), to say what it costs.

While one variant runs, only its weights are on the GPU (the others wait in CPU memory), so
each peak is that variant's own: weights plus activations.

    python benchmarks/generate.py --real --device cuda --dtype float16 --low-vram   # figures
    python benchmarks/generate.py --tiny                                            # CPU smoke
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

NAME = "generate"
DEFAULTS = {
    "real": harness.SizeDefaults(runs=5, warmup=1, extra=dict(size_px=512, steps=50)),
    "tiny": harness.SizeDefaults(runs=2, warmup=1, extra=dict(size_px=64, steps=4)),
}
PROMPT = "a photo of a <object>"
# The plain pipeline's prompt has the same tokens: elite's placeholder slot holds the reference's "S".
PLAIN_PROMPT = "a photo of a S"
LIMITS = {"time b/a": 1.10, "memory b/a": 1.05, "speed-up c/b": 2.0, "peak GB batch 1": 3.5}


def parse(argv):
    parser = harness.parser(NAME, "Time and peak memory of plain diffusers, elite and the reference loop.")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--steps", dest="steps", type=int, default=None, help="denoising steps (default 50; tiny 4)")
    parser.add_argument("--size-px", dest="size_px", type=int, default=None, help="image side in pixels (default 512; tiny 64)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--llambda", type=float, default=0.8, help="elite's lambda (default 0.8)")
    parser.add_argument("--variants", default="a,b,c", help="which of a,b,c to run (default all; --low-vram adds d)")
    parser.add_argument("--low-vram", action="store_true", help="also run (d): elite with low_vram model offload")
    parser.add_argument("--track-memory", action="store_true",
                        help="on a CPU, peak tensor bytes (the variant's weights + the storages its run creates), "
                             "in one extra untimed run per variant (CUDA measures it anyway)")
    args = harness.parse_arguments(parser, argv, DEFAULTS)
    args.batch_sizes = [int(value) for value in args.batch_sizes.split(",") if value.strip()]
    args.variants = [value.strip() for value in args.variants.split(",") if value.strip()]
    if args.low_vram and "d" not in args.variants:
        args.variants.append("d")
    unknown = set(args.variants) - {"a", "b", "c", "d"}
    if unknown or not args.batch_sizes or min(args.batch_sizes) < 1:
        raise SystemExit("--variants takes a,b,c,d and --batch-sizes positive integers.")
    return args


def image_encoder_is_lazy(models) -> bool:
    """Whether load_models defers the CLIP vision tower to the first encode (a property on Models)."""
    return isinstance(getattr(type(models), "image_encoder", None), property)


def key_value_layers(mapper) -> list:
    """A mapper's key/value projections: the only part of it the UNet's processors use."""
    return [layer for key in mapper.kv_modules for layer in mapper.key_value(key)]


def generation_modules(models) -> list:
    """What a generation-only process (`elite gen` with concepts from the library) holds on the device.

    The mappers' ten MLPs are left out: load_models keeps them in CPU memory until the first
    encode, which a process generating from library concepts never does.
    """
    modules = [models.text_encoder, models.unet, models.vae,
               *key_value_layers(models.global_mapper), *key_value_layers(models.local_mapper)]
    if not image_encoder_is_lazy(models):
        modules.append(models.image_encoder)  # load_models puts it on the device whether used or not
    return modules


def mapper_parts(mapper) -> list:
    """A mapper's key/value layers and, once an encode has read them, its MLPs (load_models leaves
    them on the meta device until then, which has nothing to move)."""
    mlps = [mlp for mlp in mapper.mapping_modules() if all(p.device.type != "meta" for p in mlp.parameters())]
    return key_value_layers(mapper) + mlps


def elite_modules(models) -> list:
    """Every module of a loaded set, without loading a lazy image encoder that was never used."""
    modules = [models.text_encoder, models.unet, models.vae, *mapper_parts(models.global_mapper),
               *mapper_parts(models.local_mapper)]
    image_encoder = models.__dict__.get("_image_encoder") if image_encoder_is_lazy(models) else models.image_encoder
    return modules + ([image_encoder] if image_encoder is not None else [])


@contextmanager
def only_on_device(device, resident: list, parked: list):
    """Move `parked` modules to CPU memory and `resident` ones to the device for the block."""
    if device.type == "cpu":
        yield
        return
    import torch

    for module in parked:
        module.to("cpu")
    for module in resident:
        module.to(device)
    torch.cuda.empty_cache()
    yield


def plain_pipeline(spec, models):
    """StableDiffusionPipeline.from_pretrained(same folder) with elite's kernel and scheduler."""
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    from elite_cli.model.generator import make_scheduler

    with warnings.catch_warnings():
        # diffusers 0.42 renamed torch_dtype to dtype; the old name works on every supported version.
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(spec.base_model, torch_dtype=models.dtype, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler("lms", models.scheduler_config)
    pipe.unet.set_attn_processor(XFormersAttnProcessor() if models.backend == "xformers" else AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_difference(first, second) -> dict:
    import numpy as np

    a = np.asarray(first).astype(np.int16)
    b = np.asarray(second).astype(np.int16)
    return {"max_abs": int(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean())}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    harness.quiet_libraries()

    import dataclasses

    import numpy as np
    import torch

    from benchmarks.reference_loop import ReferenceLoop
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.generator import Generator
    from elite_cli.model.loading import load_models

    spec = harness.model_spec(args)
    models = load_models(spec)
    device = models.device
    with tempfile.TemporaryDirectory() as folder:
        concept = Encoder(models).encode(*harness.sample_pictures(Path(folder)))
    concepts = {"object": concept}
    generator = Generator(models)
    reference = ReferenceLoop(models)
    pipe = plain_pipeline(spec, models) if "a" in args.variants else None
    offloaded = load_models(dataclasses.replace(spec, low_vram=True)) if "d" in args.variants else None
    common = dict(steps=args.steps, guidance_scale=args.guidance, width=args.size_px, height=args.size_px)
    settings = {"runs": args.runs, "warmup": args.warmup, "dtype": str(models.dtype).replace("torch.", ""),
                "memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else
                          "tracked peak tensor bytes (CPU)" if args.track_memory else None,
                "attention": models.backend, "scheduler": "lms", "prompt": PROMPT, "plain_prompt": PLAIN_PROMPT,
                "llambda": args.llambda, **common, "batch_sizes": args.batch_sizes, "variants": args.variants}

    # The concept was encoded in this process, but (b) and (c) are measured as `elite gen` runs:
    # with only what generation needs on the GPU (plus whatever load_models keeps there anyway).
    elite_weights = generation_modules(models)
    pipe_weights = [pipe.unet, pipe.vae, pipe.text_encoder] if pipe is not None else []
    offload_weights = ([*key_value_layers(offloaded.global_mapper), *key_value_layers(offloaded.local_mapper)]
                       if offloaded is not None else [])
    # Parking moves whole mappers (MLPs included) to CPU memory; the resident key/value layers
    # then go back to the device.
    offload_mappers = [*mapper_parts(offloaded.global_mapper), *mapper_parts(offloaded.local_mapper)] \
        if offloaded is not None else []
    everything = elite_modules(models) + pipe_weights + offload_mappers

    def runner(variant: str, batch: int):
        seeds = list(range(batch))
        if variant == "a":
            return lambda: pipe(prompt=[PLAIN_PROMPT] * batch, num_inference_steps=args.steps,
                                guidance_scale=args.guidance, height=args.size_px, width=args.size_px,
                                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds]).images
        if variant == "b":
            return lambda: generator.generate(PROMPT, concepts, seed=0, num_images=batch, llambda=args.llambda,
                                              scheduler="lms", **common)
        if variant == "c":
            return lambda: reference.generate(PROMPT, "object", concept, seeds=seeds, llambda=args.llambda, **common)
        return lambda: Generator(offloaded).generate(PROMPT, concepts, seed=0, num_images=batch, llambda=args.llambda,
                                                     scheduler="lms", **common)

    residents = {"a": pipe_weights, "b": elite_weights, "c": elite_weights, "d": offload_weights}
    labels = {"a": "(a) plain diffusers pipeline", "b": "(b) elite, one concept",
              "c": "(c) reference loop re-stated", "d": "(d) elite --low-vram"}
    results: dict[str, dict[str, dict]] = {}
    checks: dict[str, dict] = {}
    for batch in args.batch_sizes:
        results[str(batch)] = {}
        images = {}
        for variant in args.variants:
            resident = residents[variant]
            with only_on_device(device, resident, [m for m in everything if all(m is not r for r in resident)]):
                run = runner(variant, batch)
                measurement = harness.measure(run, runs=args.runs, warmup=args.warmup, device=device,
                                              track_memory=resident if args.track_memory else None)
                images[variant] = measurement.last_output[0]
            entry = measurement.as_dict()
            entry["weights_on_device_bytes"] = harness.module_bytes(*resident) if device.type != "cpu" else None
            entry["first_image_std"] = float(np.asarray(images[variant]).std())
            results[str(batch)][variant] = entry
        if "b" in images and "c" in images:
            checks[f"batch {batch}: elite vs reference image"] = image_difference(images["b"], images["c"])
        if "b" in images and "d" in images:
            checks[f"batch {batch}: elite vs low-vram image"] = image_difference(images["b"], images["d"])
    # Back to where load_models left everything.
    with only_on_device(device, elite_modules(models) + offload_weights, pipe_weights):
        pass

    ratios = {}
    for batch, by_variant in results.items():
        def ratio(top, bottom, key):
            if top in by_variant and bottom in by_variant and by_variant[bottom][key]:
                return by_variant[top][key] / by_variant[bottom][key]
            return None

        ratios[batch] = {
            "time b/a": ratio("b", "a", "median_s"),
            "memory b/a": ratio("b", "a", "peak_bytes"),
            "speed-up c/b": ratio("c", "b", "median_s"),
            "time d/b": ratio("d", "b", "median_s"),
            "memory d/b": ratio("d", "b", "peak_bytes"),
        }

    title = (f"Generate ({args.size} models, {device}, {settings['dtype']}, {args.size_px}x{args.size_px}, "
             f"{args.steps} steps, guidance {args.guidance}, {models.backend}, median of {args.runs})")
    rows = []
    for batch, by_variant in results.items():
        for variant, entry in by_variant.items():
            rows.append([batch, labels[variant], harness.format_seconds(entry["median_s"]),
                         harness.format_seconds(entry["median_s"] / int(batch)), harness.format_bytes(entry["peak_bytes"])])
    harness.print_table(title, ["batch", "variant", "median", "per image", "peak memory"], rows)
    harness.print_table("Ratios (same process)", ["batch", *next(iter(ratios.values())).keys()],
                        [[batch, *(harness.format_ratio(value) for value in row.values())] for batch, row in ratios.items()])
    if checks:
        harness.print_table("Same images? (pixel differences, 0..255)", ["comparison", "max abs", "mean abs"],
                            [[name, check["max_abs"], f"{check['mean_abs']:.3f}"] for name, check in checks.items()])

    applies = harness.counts(args, device)
    targets = []
    for batch, row in ratios.items():
        targets.append(harness.target(f"batch {batch}: elite/plain time", row["time b/a"], LIMITS["time b/a"], applies=applies))
        targets.append(harness.target(f"batch {batch}: elite/plain peak memory", row["memory b/a"], LIMITS["memory b/a"], applies=applies))
        targets.append(harness.target(f"batch {batch}: reference/elite time", row["speed-up c/b"], LIMITS["speed-up c/b"],
                                      at_most=False, applies=applies))
    if "1" in results and "b" in results["1"]:
        peak = results["1"]["b"]["peak_bytes"]
        targets.append(harness.target("batch 1: elite peak memory, GB (1e9 bytes)", None if peak is None else peak / 1e9,
                                      LIMITS["peak GB batch 1"], applies=applies and args.size_px == 512))
    harness.print_targets(targets)
    payload = {"settings": settings, "results": results, "ratios": ratios, "image_checks": checks, "targets": targets}
    payload["json_path"] = str(harness.write_json(NAME, args, payload, device))
    return payload


if __name__ == "__main__":
    main()
