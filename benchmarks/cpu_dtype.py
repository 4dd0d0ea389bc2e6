"""Benchmark 10: float32 against bfloat16 on the CPU, elite against plain diffusers (issue 24).

Four configurations, each in a process of its own so that its peak resident memory (ru_maxrss)
is its own, all from the same model folder, prompt tokens, seed, LMS scheduler and size:

    elite float32        Session(dtype="float32").generate(...)   (what `elite gen --dtype float32` runs)
    elite auto           Session(dtype="auto").generate(...)      (bfloat16 where the CPU has it natively)
    diffusers float32    StableDiffusionPipeline(torch_dtype=float32), SDPA attention, the same LMS
    diffusers bfloat16   the same in bfloat16

Each process loads its models, makes one image and saves it (elite also records its history
row): the whole of `elite gen`'s work, so the peak memory covers loading as well as denoising and
VAE decoding. Seconds per step are the medians of the intervals between step callbacks after the
first step (the first one also creates oneDNN's kernels). The concept is encoded once beforehand
(float32, as `elite add` encodes on the CPU) into a library the elite processes read.

    flock /tmp/elite-bench.lock python benchmarks/cpu_dtype.py --real     # figures (~15 min, 2 cores)
    python benchmarks/cpu_dtype.py --tiny                                 # smoke, seconds

`--unet-options` measures, instead, what else could make the CPU path faster, on elite's UNet
(ELITE processors, the auto dtype) in one process, one forward at a time (guidance batch of 2):
eager, channels-last memory format, one thread instead of torch's default, and torch.compile
(inductor; what `--compile` does), each against eager on wall and CPU seconds, with the largest
difference of its output from eager's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

NAME = "cpu_dtype"
DEFAULTS = {
    "real": harness.SizeDefaults(runs=1, warmup=0, extra=dict(size_px=512, steps=4)),
    "tiny": harness.SizeDefaults(runs=1, warmup=0, extra=dict(size_px=64, steps=3)),
}
PROMPT = "a photo of a <object>"
PLAIN_PROMPT = "a photo of a S"  # the same tokens: elite's placeholder slot holds the reference's "S"
# name: (which code, --dtype, options)
CONFIGURATIONS = {
    "elite float32": ("elite", "float32", {}),
    "elite auto": ("elite", "auto", {}),
    "diffusers float32": ("diffusers", "float32", {}),
    "diffusers bfloat16": ("diffusers", "bfloat16", {}),
}
LIMITS = {"speed-up auto/float32": 1.7, "time elite/diffusers": 1.10, "memory elite/diffusers": 1.05}


def parse(argv):
    parser = harness.parser(NAME, "float32 against bfloat16 on the CPU, elite against plain diffusers, at real size.")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 4: 3 timed; tiny 3)")
    parser.add_argument("--size-px", dest="size_px", type=int, default=None, help="image side (default 512; tiny 64)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default 5, elite gen's)")
    parser.add_argument("--unet-options", action="store_true",
                        help="instead: UNet forwards eager / channels-last / one thread / torch.compile")
    parser.add_argument("--skip-compile", action="store_true", help="with --unet-options: leave torch.compile out")
    parser.add_argument("--pair-rounds", dest="pair_rounds", type=int, default=2,
                        help="images per side in the paired time runs (elite and diffusers in one process, "
                             "alternated, after one warm-up image each; 0 leaves them out; default 2)")
    parser.add_argument("--pair-dtypes", dest="pair_dtypes", default="float32,auto",
                        help="which elite --dtype values get a paired run (default float32,auto)")
    parser.add_argument("--only", default="", help="comma-separated configuration names to run (default all)")
    args = harness.parse_arguments(parser, argv, DEFAULTS)
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is not timed).")
    args.device = "cpu"
    return args


# ---- the child processes ------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_bytes() -> int | None:
    """Resident memory now (Linux), to tell the loading peak from what stays."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None


def step_times(stamps: list[tuple[float, float]], started: float) -> dict:
    """When each step ended (wall clock since `started`) and the CPU time of this process (all its
    threads) at that moment: on a machine shared with other work the CPU seconds a step takes are
    steadier than its wall seconds."""
    return {"stamps": [wall - started for wall, _ in stamps], "cpu_stamps": [cpu for _, cpu in stamps]}


def elite_runner(job: dict):
    """elite's Session in the job's dtype, and a function that makes one image with it (what
    `elite gen` runs): it returns the (wall, CPU) time at each step's end and the image's path."""
    from elite_cli.api import Session

    paths = job["paths"]
    session = Session(job["library"], base_model=paths["base_model"], image_encoder=paths["image_encoder"],
                      global_mapper=paths["global_mapper"], local_mapper=paths["local_mapper"], device="cpu",
                      dtype=job["dtype"], compile=job["options"].get("compile", False))
    session.models  # noqa: B018  (loaded here, as generate would, to read the memory after loading)

    def make_image(out: str):
        stamps: list[tuple[float, float]] = []
        result = session.generate(PROMPT, seed=0, steps=job["steps"], guidance=job["guidance"], width=job["size_px"],
                                  height=job["size_px"], scheduler="lms", output_dir=out,
                                  progress=lambda step, total: stamps.append((time.perf_counter(), time.process_time())))
        return stamps, str(result.paths[0])

    return make_image, session.models.precision.line()


def diffusers_runner(job: dict):
    """diffusers' StableDiffusionPipeline in the job's dtype (SDPA, elite's LMS), and a function that
    makes one image with it, as elite_runner's does."""
    import warnings

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    from elite_cli.model.generator import make_scheduler

    dtype = getattr(torch, job["dtype"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(job["paths"]["base_model"], torch_dtype=dtype, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler("lms", pipe.scheduler.config)  # elite's LMS constructor
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    if job["options"].get("channels_last"):
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)

    def make_image(out: str):
        stamps: list[tuple[float, float]] = []

        def on_step(pipeline, step, timestep, kwargs):
            stamps.append((time.perf_counter(), time.process_time()))
            return kwargs

        image = pipe(PLAIN_PROMPT, num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                     height=job["size_px"], width=job["size_px"], generator=torch.Generator("cpu").manual_seed(0),
                     callback_on_step_end=on_step).images[0]
        path = Path(out) / f"diffusers-{len(list(Path(out).glob('diffusers*.png')))}.png"
        image.save(path)
        return stamps, str(path)

    return make_image, f"{job['dtype']} (torch_dtype)"


def run_alone(runner, job: dict) -> dict:
    """Load, then one image: the whole work of one command, for its peak memory."""
    if runner is elite_runner:
        from diffusers import StableDiffusionPipeline  # noqa: F401  (imported before the clock, as diffusers' side does)
        from transformers import CLIPTextModel  # noqa: F401
    started = time.perf_counter()
    make_image, precision = runner(job)
    loaded = {"loaded_peak_rss_bytes": peak_rss_bytes(), "loaded_rss_bytes": rss_bytes()}
    stamps, image = make_image(job["out"])
    return {"seconds": time.perf_counter() - started, **step_times(stamps, started), "image": image,
            "precision": precision, **loaded}


def run_elite(job: dict) -> dict:
    return run_alone(elite_runner, job)


def run_diffusers(job: dict) -> dict:
    return run_alone(diffusers_runner, job)


def run_pair(job: dict) -> dict:
    """elite and diffusers in one process and one dtype, their images alternated (e, d, then d, e,
    ...) so that the load of a shared machine falls on both alike: each side's step intervals
    (wall and CPU seconds, the first step of each image left out) over all its images."""
    elite_dtype = job["dtype"]
    runners = {"elite": elite_runner(job)[0],
               "diffusers": diffusers_runner(dict(job, dtype="bfloat16" if elite_dtype == "auto" else elite_dtype))[0]}
    intervals = {side: {"wall": [], "cpu": []} for side in runners}
    for round_index in range(job["rounds"] + 1):
        order = ("elite", "diffusers") if round_index % 2 == 0 else ("diffusers", "elite")
        for side in order:
            stamps, _ = runners[side](job["out"])
            if round_index == 0:
                continue  # the warm-up round: oneDNN builds its kernels
            for kind, index in (("wall", 0), ("cpu", 1)):
                times = [stamp[index] for stamp in stamps]
                intervals[side][kind] += [later - earlier for earlier, later in zip(times, times[1:])]
    return {"intervals": intervals}


def forward_seconds(run, repeats: int) -> dict:
    """Wall and CPU seconds of one call (the best of `repeats`, after one untimed call)."""
    output = run()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        output = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": min(walls), "cpu_s": min(cpus), "output": output}


def run_unet_options(job: dict) -> dict:
    """elite's UNet in the auto dtype, one guidance batch, under each option in turn."""
    import dataclasses

    import torch

    from elite_cli.model.loading import load_models
    from elite_cli.model.spec import ModelSpec

    paths = job["paths"]
    spec = ModelSpec(**{key: paths[key] for key in ("base_model", "image_encoder", "global_mapper", "local_mapper")},
                     device="cpu", dtype="auto")
    models = load_models(dataclasses.replace(spec))
    unet, dtype = models.unet, models.dtype
    side = job["size_px"] // models.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, side, side, generator=generator).to(dtype)
    context = torch.randn(2, 77, models.text_width, generator=generator).to(dtype)

    def forward(module, sample):
        with torch.no_grad():
            return module(sample, 500, encoder_hidden_states=context, cross_attention_kwargs={"elite": None}).sample.float()

    results = {}
    eager = forward_seconds(lambda: forward(unet, latents), job["repeats"])
    reference = eager.pop("output")
    results["eager"] = eager
    if models.backend != "sdpa":  # the attention kernel auto picked (tiled) against PyTorch's fused one
        from elite_cli.model.attention import install_elite_processors

        install_elite_processors(unet, models.global_mapper, models.local_mapper, "sdpa")
        entry = forward_seconds(lambda: forward(unet, latents), job["repeats"])
        entry["max_abs_vs_eager"] = float((entry.pop("output") - reference).abs().max())
        results["fused attention (sdpa)"] = entry
        install_elite_processors(unet, models.global_mapper, models.local_mapper, models.backend)
    unet.to(memory_format=torch.channels_last)
    entry = forward_seconds(lambda: forward(unet, latents.to(memory_format=torch.channels_last)), job["repeats"])
    entry["max_abs_vs_eager"] = float((entry.pop("output") - reference).abs().max())
    results["channels-last"] = entry
    unet.to(memory_format=torch.contiguous_format)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    entry = forward_seconds(lambda: forward(unet, latents), job["repeats"])
    entry["max_abs_vs_eager"] = float((entry.pop("output") - reference).abs().max())
    results[f"1 thread (default {threads})"] = entry
    torch.set_num_threads(threads)
    if not job["skip_compile"]:
        compiled = torch.compile(unet)
        started = time.perf_counter()
        forward(compiled, latents)
        compile_seconds = time.perf_counter() - started
        entry = forward_seconds(lambda: forward(compiled, latents), job["repeats"])
        entry["max_abs_vs_eager"] = float((entry.pop("output") - reference).abs().max())
        entry["first_call_s"] = compile_seconds
        results["torch.compile"] = entry
    return {"options": results, "precision": models.precision.line(), "attention": models.backend}


def child(job: dict) -> None:
    harness.quiet_libraries()
    import torch

    if job["options"].get("threads"):
        torch.set_num_threads(job["options"]["threads"])
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    if job["code"] == "encode":
        from elite_cli.api import Session

        paths = job["paths"]
        with tempfile.TemporaryDirectory() as folder:
            picture, mask = harness.sample_pictures(Path(folder))
            Session(job["library"], base_model=paths["base_model"], image_encoder=paths["image_encoder"],
                    global_mapper=paths["global_mapper"], local_mapper=paths["local_mapper"], device="cpu",
                    dtype="float32").add_concept(picture, mask, name="object")
        result = {}
    else:
        result = {"elite": run_elite, "diffusers": run_diffusers, "unet": run_unet_options,
                  "pair": run_pair}[job["code"]](job)
    result.update(peak_rss_bytes=peak_rss_bytes(), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def run_child(job: dict) -> dict:
    """One configuration in a fresh interpreter; its RESULT line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    env = dict(os.environ, PYTHONPATH=str(harness.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        raise SystemExit(f"{job['code']} {job['dtype']} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# ---- the parent ---------------------------------------------------------------------------------

def seconds_per_step(stamps: list[float]) -> float:
    """Median interval between step callbacks, the first step left out."""
    return statistics.median(later - earlier for earlier, later in zip(stamps, stamps[1:]))


def mean_abs_difference(first: str, second: str) -> dict:
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(path).convert("RGB")).astype(np.int16) for path in (first, second))
    return {"mean_abs": float(np.abs(a - b).mean()), "max_abs": int(np.abs(a - b).max())}


def ratio(results: dict, top: str, bottom: str, key: str) -> float | None:
    if top in results and bottom in results:
        return results[top][key] / results[bottom][key]
    return None


def paired_ratio(paired: dict, dtype: str, kind: str) -> float | None:
    if dtype not in paired:
        return None
    return paired[dtype]["elite"][kind] / paired[dtype]["diffusers"][kind]


def unet_options(args, paths: dict, choice) -> dict:
    """--unet-options: one child process, each option against eager."""
    import torch

    with tempfile.TemporaryDirectory(prefix="elite-cpu-dtype-") as scratch:
        result = run_child(dict(code="unet", dtype="auto", options={}, paths=paths, size_px=args.size_px,
                                repeats=2, skip_compile=args.skip_compile, out=scratch))
    options = result["options"]
    eager = options["eager"]
    rows = [[name, f"{entry['wall_s']:.3f} s", f"{entry['cpu_s']:.3f} s",
             harness.format_ratio(eager["wall_s"] / entry["wall_s"]), harness.format_ratio(eager["cpu_s"] / entry["cpu_s"]),
             "-" if "max_abs_vs_eager" not in entry else f"{entry['max_abs_vs_eager']:.3g}",
             "-" if "first_call_s" not in entry else f"{entry['first_call_s']:.0f} s"]
            for name, entry in options.items()]
    harness.print_table(f"elite's UNet, one forward, guidance batch 2, {args.size_px // 8}x{args.size_px // 8} latents, "
                        f"{result['precision']}, {result['attention']} attention",
                        ["option", "wall", "CPU", "speed-up (wall)", "speed-up (CPU)", "max abs vs eager", "first call"], rows)
    payload = {"settings": {"size_px": args.size_px, "auto": choice.line(), "load_average": os.getloadavg()},
               "unet_options": options, "peak_rss_bytes": result["peak_rss_bytes"]}
    payload["json_path"] = str(harness.write_json(f"{NAME}-unet-options", args, payload, torch.device("cpu")))
    return payload


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        child(json.loads(argv[1]))
        return {}
    args = parse(argv)
    import torch

    from elite_cli.model.precision import choose_dtype, cpu_features

    features = cpu_features()
    choice = choose_dtype("auto", torch.device("cpu"), features)
    paths = {key: str(value) for key, value in vars(harness.model_paths(args.size, args.models_dir)).items()}
    if args.unet_options:
        return unet_options(args, paths, choice)
    configurations = dict(CONFIGURATIONS)
    if args.only:
        configurations = {name: configurations[name] for name in args.only.split(",")}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="elite-cpu-dtype-") as scratch:
        library = str(Path(scratch) / "library")
        common = dict(paths=paths, library=library, steps=args.steps, guidance=args.guidance, size_px=args.size_px)
        run_child(dict(common, code="encode", dtype="float32", options={}, out=str(Path(scratch) / "encode")))
        for name, (code, dtype, options) in configurations.items():
            started = time.perf_counter()
            result = run_child(dict(common, code=code, dtype=dtype, options=options,
                                    out=str(Path(scratch) / name.replace(" ", "-"))))
            result["seconds_per_step"] = seconds_per_step(result["stamps"])
            result["cpu_seconds_per_step"] = seconds_per_step(result["cpu_stamps"])
            result["process_seconds"] = time.perf_counter() - started
            print(f"{name}: {result['seconds_per_step']:.3f} s/step ({result['cpu_seconds_per_step']:.3f} CPU s), peak RSS "
                  f"{harness.format_bytes(result['peak_rss_bytes'])}, {result['precision']}", flush=True)
            results[name] = result
        paired = {}
        for dtype in [name.strip() for name in args.pair_dtypes.split(",") if name.strip()] if args.pair_rounds else ():
            if dtype == "auto" and choice.dtype != torch.bfloat16:
                continue  # auto is float32 here: the float32 pair says it
            result = run_child(dict(common, code="pair", dtype=dtype, options={}, rounds=args.pair_rounds,
                                    out=str(Path(scratch) / f"pair-{dtype}")))
            paired[dtype] = {side: {kind: statistics.median(values) for kind, values in entry.items()}
                             for side, entry in result["intervals"].items()}
            paired[dtype]["intervals"] = result["intervals"]
            print(f"paired {dtype}: elite {paired[dtype]['elite']['wall']:.3f} s/step "
                  f"({paired[dtype]['elite']['cpu']:.3f} CPU s), diffusers {paired[dtype]['diffusers']['wall']:.3f} s/step "
                  f"({paired[dtype]['diffusers']['cpu']:.3f} CPU s)", flush=True)
        checks = {}
        for code in ("elite", "diffusers"):
            low = "elite auto" if code == "elite" else "diffusers bfloat16"
            if f"{code} float32" in results and low in results:
                checks[f"{code}: float32 vs {low.split()[-1]}"] = mean_abs_difference(results[f"{code} float32"]["image"],
                                                                                     results[low]["image"])
        for result in results.values():
            result["image"] = Path(result["image"]).name  # the scratch folder is gone after this

    ratios = {
        "speed-up elite float32/auto": ratio(results, "elite float32", "elite auto", "seconds_per_step"),
        "speed-up elite float32/auto, CPU seconds": ratio(results, "elite float32", "elite auto", "cpu_seconds_per_step"),
        "speed-up diffusers float32/bfloat16, CPU seconds": ratio(results, "diffusers float32", "diffusers bfloat16",
                                                                  "cpu_seconds_per_step"),
        "time elite/diffusers float32, CPU seconds": ratio(results, "elite float32", "diffusers float32",
                                                           "cpu_seconds_per_step"),
        "time elite auto/diffusers bfloat16, CPU seconds": ratio(results, "elite auto", "diffusers bfloat16",
                                                                 "cpu_seconds_per_step"),
        "speed-up diffusers float32/bfloat16": ratio(results, "diffusers float32", "diffusers bfloat16", "seconds_per_step"),
        "time elite/diffusers float32": ratio(results, "elite float32", "diffusers float32", "seconds_per_step"),
        "time elite auto/diffusers bfloat16": ratio(results, "elite auto", "diffusers bfloat16", "seconds_per_step"),
        "paired time elite/diffusers float32": paired_ratio(paired, "float32", "wall"),
        "paired time elite/diffusers float32, CPU seconds": paired_ratio(paired, "float32", "cpu"),
        "paired time elite auto/diffusers bfloat16": paired_ratio(paired, "auto", "wall"),
        "paired time elite auto/diffusers bfloat16, CPU seconds": paired_ratio(paired, "auto", "cpu"),
        "memory elite/diffusers float32": ratio(results, "elite float32", "diffusers float32", "peak_rss_bytes"),
        "memory elite auto/diffusers bfloat16": ratio(results, "elite auto", "diffusers bfloat16", "peak_rss_bytes"),
    }
    title = (f"CPU precisions ({args.size} models, {args.size_px}x{args.size_px}, {args.steps} steps, "
             f"guidance {args.guidance}, lms; auto = {choice.line()})")
    rows = [[name, f"{result['seconds_per_step']:.3f} s", f"{result['cpu_seconds_per_step']:.3f} s", f"{result['seconds']:.1f} s",
             harness.format_bytes(result["peak_rss_bytes"]), harness.format_bytes(result["loaded_peak_rss_bytes"]),
             harness.format_bytes(result["loaded_rss_bytes"]), result["threads"]] for name, result in results.items()]
    harness.print_table(title, ["configuration", "per step", "CPU s per step", "load + image", "peak RSS", "peak RSS by end of loading",
                                "RSS after loading", "threads"], rows)
    harness.print_table("Ratios (same run)", ["ratio", "value"],
                        [[name, harness.format_ratio(value)] for name, value in ratios.items()])
    harness.print_table("float32 against bfloat16 images (0..255)", ["comparison", "mean abs", "max abs"],
                        [[name, f"{check['mean_abs']:.2f}", check["max_abs"]] for name, check in checks.items()])
    native = choice.dtype == torch.bfloat16
    note = "" if args.size == "real" else "does not count: only real sizes do"

    def target(label: str, key: str, limit: str, bfloat16: bool, at_most: bool = True) -> dict:
        applies = args.size == "real" and (native or not bfloat16)
        return harness.target(label, ratios[key], LIMITS[limit], at_most=at_most, applies=applies,
                              note=note or ("" if applies else "this CPU has no native bfloat16"))

    targets = [
        target("elite auto / float32 speed-up", "speed-up elite float32/auto", "speed-up auto/float32", True, False),
        # Time against diffusers from the paired runs where they ran (one process, alternated), else
        # from the separate processes (which run at different moments of a shared machine's load).
        target("elite / diffusers time, float32", "paired time elite/diffusers float32" if paired
               else "time elite/diffusers float32", "time elite/diffusers", False),
        target("elite auto / diffusers bfloat16 time", "paired time elite auto/diffusers bfloat16" if paired
               else "time elite auto/diffusers bfloat16", "time elite/diffusers", True),
        target("elite / diffusers peak RSS, float32", "memory elite/diffusers float32", "memory elite/diffusers", False),
        target("elite auto / diffusers bfloat16 peak RSS", "memory elite auto/diffusers bfloat16",
               "memory elite/diffusers", True),
    ]
    harness.print_targets(targets)
    flags = sorted(key for key, value in features.items() if value is True)
    settings = {"steps": args.steps, "size_px": args.size_px, "guidance": args.guidance, "scheduler": "lms",
                "prompt": PROMPT, "plain_prompt": PLAIN_PROMPT, "auto": choice.line(), "cpu_flags": flags,
                "load_average": os.getloadavg()}
    payload = {"settings": settings, "results": results, "paired": paired, "ratios": ratios, "image_checks": checks,
               "targets": targets}
    payload["json_path"] = str(harness.write_json(NAME, args, payload, torch.device("cpu")))
    return payload


if __name__ == "__main__":
    main()
