"""Benchmark: img2img, inpainting and ControlNet in elite against diffusers' own pipelines (issue 23).

For each mode, in one process and on the same weights:
(a) diffusers' StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline /
    StableDiffusionControlNetPipeline, no concept, LMS, same attention kernel;
(b) elite (Generator with the mode prepared: what `elite gen --init-image / --inpaint / --control`
    runs) with one concept, so the local injection runs in every cross-attention layer.
Both include their own picture preprocessing. Runs alternate a, b, then b, a, ... so that a busy
shared machine slows both alike; the median of each is reported, and b/a is the figure (target 1.10),
beside the same ratio in CPU seconds of the process and of the fastest run of each side. Each
mode's line is printed as soon as it is measured.

    flock /tmp/elite-bench.lock python benchmarks/modes.py --real --device cpu --size-px 256 --steps 4
    python benchmarks/modes.py --tiny                                        # seconds, smoke figures
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

NAME = "modes"
DEFAULTS = {
    "real": harness.SizeDefaults(runs=3, warmup=1, extra=dict(size_px=256, steps=4)),
    "tiny": harness.SizeDefaults(runs=3, warmup=1, extra=dict(size_px=64, steps=4)),
}
MODES = ("img2img", "inpaint", "canny")
PROMPT, PLAIN_PROMPT = "a photo of a <object>", "a photo of a S"
LIMIT = 1.10


def parse(argv):
    parser = harness.parser(NAME, "Seconds of elite's img2img / inpainting / ControlNet against diffusers' pipelines.")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 4)")
    parser.add_argument("--size-px", dest="size_px", type=int, default=None, help="image side (default 256; tiny 64)")
    parser.add_argument("--strength", type=float, default=0.75, help="img2img and inpainting strength (default 0.75)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"which of {','.join(MODES)} (default all)")
    args = harness.parse_arguments(parser, argv, DEFAULTS)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if set(args.modes) - set(MODES):
        raise SystemExit(f"--modes takes {','.join(MODES)}.")
    return args


def controlnet_folder(spec, models_root: Path) -> Path:
    """A ControlNet the size of the base UNet's encoder (random weights), saved once beside the models."""
    folder = models_root / "controlnet-from-unet"
    if not (folder / "config.json").is_file():
        import torch
        from diffusers import ControlNetModel, UNet2DConditionModel

        torch.manual_seed(0)
        ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(spec.base_model, subfolder="unet")).save_pretrained(folder)
    return folder


def pipeline(kind: str, spec, models, controlnet_path: Path | None):
    import diffusers
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    from elite_cli.model.generator import make_scheduler

    name = {"img2img": "StableDiffusionImg2ImgPipeline", "inpaint": "StableDiffusionInpaintPipeline",
            "canny": "StableDiffusionControlNetPipeline"}[kind]
    extra = {}
    if kind == "canny":
        extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet_path, torch_dtype=models.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = getattr(diffusers, name).from_pretrained(spec.base_model, torch_dtype=models.dtype, safety_checker=None,
                                                        feature_extractor=None, requires_safety_checker=False, **extra)
    pipe.to(models.device)
    pipe.scheduler = make_scheduler("lms", models.scheduler_config)
    pipe.unet.set_attn_processor(XFormersAttnProcessor() if models.backend == "xformers" else AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    harness.quiet_libraries()
    import torch
    from PIL import Image

    from elite_cli.model.encoder import Encoder
    from elite_cli.model.generator import Generator, Job
    from elite_cli.model.loading import load_models
    from elite_cli.model.mode_options import build_image_mode
    from elite_cli.model.modes import control_map, prepare_mode

    spec = harness.model_spec(args)
    models = load_models(spec)
    size = args.size_px
    folder = Path(tempfile.mkdtemp(prefix="elite-bench-modes-"))
    picture, region = harness.sample_pictures(folder, size)
    concept = Encoder(models).encode(picture, region)
    models_root = Path(spec.base_model).parent
    controlnet_path = controlnet_folder(spec, models_root) if "canny" in args.modes else None
    generator = Generator(models)
    guidance = 7.5
    options = {"img2img": dict(init_image=picture, strength=args.strength),
               "inpaint": dict(inpaint=picture, region=region, strength=args.strength),
               "canny": dict(control=[f"canny={picture}"])}
    results, targets = {}, []
    for kind in args.modes:
        mode = build_image_mode(**options[kind], settings={"controlnet_canny": str(controlnet_path or "")})
        pipe = pipeline(kind, spec, models, controlnet_path)
        source = Image.open(picture).convert("RGB")
        if kind == "img2img":
            inputs = dict(image=source, strength=args.strength)
        elif kind == "inpaint":
            inputs = dict(image=source, mask_image=Image.open(region), strength=args.strength, height=size, width=size)
        else:  # the same edge map elite makes from the picture
            inputs = dict(image=control_map(mode.controls[0], models, size, size), height=size, width=size)

        def plain():
            return pipe(PLAIN_PROMPT, num_inference_steps=args.steps, guidance_scale=guidance, **inputs,
                        generator=torch.Generator("cpu").manual_seed(0)).images

        def elite():
            prepared = prepare_mode(mode, models, size, size)
            return generator.generate_batch([Job(PROMPT, 0)], {"object": concept}, steps=args.steps,
                                            guidance_scale=guidance, llambda=0.8, width=size, height=size,
                                            mode=prepared)

        for _ in range(args.warmup):
            plain(), elite()
        times = {"a": [], "b": []}
        cpu_times = {"a": [], "b": []}
        for index in range(args.runs):
            # Alternated, and in turn a-first and b-first: a busy machine slows both alike.
            order = (("a", plain), ("b", elite)) if index % 2 == 0 else (("b", elite), ("a", plain))
            for variant, run in order:
                harness.synchronize(models.device)
                started, started_cpu = time.perf_counter(), time.process_time()
                run()
                harness.synchronize(models.device)
                times[variant].append(time.perf_counter() - started)
                cpu_times[variant].append(time.process_time() - started_cpu)
        medians = {variant: statistics.median(values) for variant, values in times.items()}
        cpu_medians = {variant: statistics.median(values) for variant, values in cpu_times.items()}
        results[kind] = {"times_s": times, "cpu_times_s": cpu_times, "median_s": medians, "cpu_median_s": cpu_medians,
                         "ratio b/a": medians["b"] / medians["a"],
                         "cpu ratio b/a": cpu_medians["b"] / cpu_medians["a"],
                         "best ratio b/a": min(times["b"]) / min(times["a"])}
        targets.append(harness.target(f"{kind}: elite/diffusers time", results[kind]["ratio b/a"], LIMIT,
                                      applies=args.size == "real"))  # the target holds on the CPU too
        # Each mode's figures as soon as they exist (a real-size run on a CPU takes long).
        print(f"{kind}: diffusers {harness.format_seconds(medians['a'])}, elite {harness.format_seconds(medians['b'])}, "
              f"b/a {results[kind]['ratio b/a']:.3f} (CPU seconds {results[kind]['cpu ratio b/a']:.3f}, "
              f"best runs {results[kind]['best ratio b/a']:.3f}); runs a {[round(t, 2) for t in times['a']]}, "
              f"b {[round(t, 2) for t in times['b']]}", flush=True)
        del pipe
    title = (f"Modes ({args.size} models, {models.device}, {size}x{size}, {args.steps} steps, strength {args.strength}, "
             f"guidance {guidance}, median of {args.runs}, alternated)")
    harness.print_table(title, ["mode", "(a) diffusers", "(b) elite, one concept", "b/a", "b/a CPU seconds",
                                "b/a best runs"],
                        [[kind, harness.format_seconds(entry["median_s"]["a"]),
                          harness.format_seconds(entry["median_s"]["b"]), harness.format_ratio(entry["ratio b/a"]),
                          harness.format_ratio(entry["cpu ratio b/a"]), harness.format_ratio(entry["best ratio b/a"])]
                         for kind, entry in results.items()])
    harness.print_targets(targets)
    payload = {"settings": {"size_px": size, "steps": args.steps, "strength": args.strength, "guidance": guidance,
                            "runs": args.runs, "warmup": args.warmup, "attention": models.backend},
               "results": results, "targets": targets}
    payload["json_path"] = str(harness.write_json(NAME, args, payload, models.device))
    return payload


if __name__ == "__main__":
    main()
