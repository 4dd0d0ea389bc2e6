"""Benchmark 3: attention back ends and torch.compile for elite generation.

- eager with PyTorch SDPA, eager with xformers (when it imports; CUDA only),
- compiled: ModelSpec(compile=True), i.e. torch.compile of the UNet with the ELITE processors
  installed. The first call's time is reported as the compile time; graph breaks and graphs
  are counted from torch._dynamo's counters (the target is none: one graph).
Each is checked against eager SDPA on the same seed: the images should match up to fp16 noise.

    python benchmarks/backends.py --real --device cuda --dtype float16   # figures
    python benchmarks/backends.py --tiny --skip-compile                  # CPU smoke, seconds
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.generate import elite_modules, image_difference

NAME = "backends"
DEFAULTS = {
    "real": harness.SizeDefaults(runs=5, warmup=1, extra=dict(size_px=512, steps=50)),
    "tiny": harness.SizeDefaults(runs=2, warmup=1, extra=dict(size_px=64, steps=4)),
}
PROMPT = "a photo of a <object>"
COMPILE_SPEED_UP = 1.3


def parse(argv):
    parser = harness.parser(NAME, "elite generation with SDPA, xformers and torch.compile.")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default 1)")
    parser.add_argument("--steps", dest="steps", type=int, default=None, help="denoising steps (default 50; tiny 4)")
    parser.add_argument("--size-px", dest="size_px", type=int, default=None, help="image side in pixels (default 512; tiny 64)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variant (slow to compile)")
    args = harness.parse_arguments(parser, argv, DEFAULTS)
    args.batch_sizes = [int(value) for value in args.batch_sizes.split(",") if value.strip()]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    harness.quiet_libraries()

    import numpy as np
    import torch
    import torch._dynamo

    from elite_cli.model.attention import resolve_backend, xformers_available
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.generator import Generator
    from elite_cli.model.loading import load_models

    base_spec = harness.model_spec(args)
    eager = load_models(dataclasses.replace(base_spec, attention="sdpa"))
    device = eager.device
    with tempfile.TemporaryDirectory() as folder:
        concepts = {"object": Encoder(eager).encode(*harness.sample_pictures(Path(folder)))}
    common = dict(steps=args.steps, guidance_scale=args.guidance, width=args.size_px, height=args.size_px, scheduler="lms")

    # (label, spec); the compiled UNet is measured last so it never has to move between devices.
    variants = [("eager, sdpa", dataclasses.replace(base_spec, attention="sdpa"))]
    skipped = {}
    if device.type == "cuda" and xformers_available():
        variants.append(("eager, xformers", dataclasses.replace(base_spec, attention="xformers")))
    else:
        skipped["eager, xformers"] = "xformers is not installed" if device.type == "cuda" else "xformers needs CUDA"
    # Compiled with the kernel a user's --compile run would get (the --attention choice).
    compile_attention = resolve_backend(args.attention, device)
    compile_label = f"compiled, {compile_attention}"
    if args.skip_compile:
        skipped[compile_label] = "--skip-compile"
    else:
        variants.append((compile_label, dataclasses.replace(base_spec, attention=compile_attention, compile=True)))

    settings = {"runs": args.runs, "warmup": args.warmup, "dtype": str(eager.dtype).replace("torch.", ""),
                "batch_sizes": args.batch_sizes, "prompt": PROMPT, **common}
    results: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    compile_info: dict = {}
    loaded = []
    reference_images: dict[tuple[str, int], object] = {}
    for label, spec in variants:
        if device.type == "cuda":  # earlier sets wait in CPU memory, so each peak is its own
            for other in loaded:
                for module in elite_modules(other):
                    module.to("cpu")
            torch.cuda.empty_cache()
        models = load_models(spec)
        loaded.append(models)
        generator = Generator(models)
        results[label] = {}
        for batch in args.batch_sizes:
            def run():
                return generator.generate(PROMPT, concepts, seed=0, num_images=batch, **common)

            if spec.compile and batch == args.batch_sizes[0]:
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
                harness.synchronize(device)
                start = time.perf_counter()
                run()
                harness.synchronize(device)
                counters = torch._dynamo.utils.counters
                compile_info = {
                    "first_call_s": time.perf_counter() - start,
                    "graph_breaks": int(sum(counters["graph_break"].values())),
                    "graph_break_reasons": sorted(counters["graph_break"]),
                    "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
                }
            measurement = harness.measure(run, runs=args.runs, warmup=args.warmup, device=device)
            image = measurement.last_output[0]
            if spec.compile:
                # More graphs after the timed runs than after the first call means recompiles,
                # which would make the compiled median meaningless.
                compile_info[f"unique_graphs_after_batch_{batch}"] = int(
                    torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))
            results[label][str(batch)] = {**measurement.as_dict(), "backend": models.backend}
            if not spec.compile:
                reference_images.setdefault((models.backend, batch), image)
                against, against_label = reference_images.get(("sdpa", batch)), "eager, sdpa"
                if models.backend == "sdpa":
                    against = None
            else:
                against, against_label = reference_images.get((models.backend, batch)), f"eager, {models.backend}"
            if against is not None:
                checks[f"batch {batch}: {label} vs {against_label}"] = image_difference(image, against)
            results[label][str(batch)]["first_image_std"] = float(np.asarray(image).std())

    ratios = {}
    for batch in map(str, args.batch_sizes):
        base = results["eager, sdpa"][batch]["median_s"]
        ratios[batch] = {f"{label} / eager sdpa": results[label][batch]["median_s"] / base
                         for label in results if label != "eager, sdpa"}
        if compile_label in results:
            eager_label = f"eager, {compile_attention}"
            if eager_label in results:
                ratios[batch]["compile speed-up"] = results[eager_label][batch]["median_s"] / results[compile_label][batch]["median_s"]

    rows = [[batch, label, harness.format_seconds(results[label][batch]["median_s"]),
             harness.format_bytes(results[label][batch]["peak_bytes"])]
            for label in results for batch in results[label]]
    rows += [["-", label, f"skipped: {why}", "-"] for label, why in skipped.items()]
    harness.print_table(f"Back ends ({args.size} models, {device}, {settings['dtype']}, {args.size_px}px, {args.steps} steps, "
                        f"median of {args.runs})", ["batch", "variant", "median", "peak memory"], rows)
    if ratios and any(ratios.values()):
        harness.print_table("Ratios (same process)", ["batch", "ratio", "value"],
                            [[batch, name, harness.format_ratio(value)] for batch, row in ratios.items() for name, value in row.items()])
    if compile_info:
        harness.print_table("torch.compile", ["first call (compile)", "graph breaks", "graphs"],
                            [[harness.format_seconds(compile_info["first_call_s"]), compile_info["graph_breaks"],
                              compile_info["unique_graphs"]]])
    if checks:
        harness.print_table("Same images? (pixel differences, 0..255)", ["comparison", "max abs", "mean abs"],
                            [[name, check["max_abs"], f"{check['mean_abs']:.3f}"] for name, check in checks.items()])

    applies = harness.counts(args, device)
    targets = []
    if "1" in ratios and "compile speed-up" in ratios["1"]:
        targets.append(harness.target("batch 1: compile speed-up over eager", ratios["1"]["compile speed-up"],
                                      COMPILE_SPEED_UP, at_most=False, applies=applies))
    if compile_info:
        targets.append(harness.target("graph breaks in the compiled UNet", compile_info["graph_breaks"], 0,
                                      applies=applies or device.type == "cpu", note="counted by torch._dynamo"))
    harness.print_targets(targets)
    payload = {"settings": settings, "results": results, "skipped": skipped, "ratios": ratios, "compile": compile_info,
               "image_checks": checks, "targets": targets}
    payload["json_path"] = str(harness.write_json(NAME, args, payload, device))
    return payload


if __name__ == "__main__":
    main()
