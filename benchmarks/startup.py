"""Benchmark 4: start-up. `elite --help` wall time, and model loading against plain from_pretrained.

1. Commands in fresh subprocesses (median of --help-runs): the bare interpreter, `import elite_cli`,
   `python -m elite_cli --help`, when installed the `elite --help` console script, and
   `python -m elite_cli list` on an empty library. A run
   with `-X importtime` lists which heavy libraries `--help` imports (the answer should be none).
2. Loading, in this process, interleaved run by run (medians; the first import of the libraries
   is timed once and reported apart):
   - diffusers `StableDiffusionPipeline.from_pretrained(base folder)` moved to the device;
   - the same plus `CLIPVisionModel.from_pretrained(image encoder)` and both mapper files: the
     like-for-like baseline for what elite loads;
   - `elite_cli.model.loading.load_models(spec)`.
3. Where a model command's time goes (`--breakdown-runs` fresh processes, medians): a child
   process does what `elite add PICTURE` does, phase by phase, timing wall and CPU of each:
   the CLI import, settings, `import torch`, the transformers and diffusers imports
   `load_models` needs, `load_models`, and the work (one encode); the interpreter's start and
   exit are the rest of the child's wall time. The real `python -m elite_cli add` of the same
   picture is timed in the same run, and every phase is reported as a share of the total.

    python benchmarks/startup.py --real --device cuda --dtype float16   # figures
    python benchmarks/startup.py --tiny                                 # CPU smoke
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

NAME = "startup"
DEFAULTS = {
    "real": harness.SizeDefaults(runs=3, warmup=1, extra=dict(help_runs=10, breakdown_runs=3)),
    "tiny": harness.SizeDefaults(runs=2, warmup=0, extra=dict(help_runs=3, breakdown_runs=1)),
}
HELP_LIMIT_S = 0.5
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "xformers")


def parse(argv):
    parser = harness.parser(NAME, "Start-up time of the CLI and model loading against plain from_pretrained.")
    parser.add_argument("--help-runs", dest="help_runs", type=int, default=None,
                        help="subprocess runs per command (default 10; tiny 3)")
    parser.add_argument("--skip-load", action="store_true", help="only time the commands")
    parser.add_argument("--breakdown-runs", dest="breakdown_runs", type=int, default=None,
                        help="fresh processes for the model-command breakdown (default 3; tiny 1; 0 skips it)")
    parser.add_argument("--breakdown-without-command", action="store_true",
                        help="do not also time `python -m elite_cli add` next to the breakdown (tests)")
    return harness.parse_arguments(parser, argv, DEFAULTS)


def subprocess_environment(**extra: str) -> dict:
    """This checkout's elite_cli first on the path, whatever is pip-installed."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(harness.REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def time_command(command: list[str], runs: int, **env: str) -> dict:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=harness.REPO, env=subprocess_environment(**env),
                                timeout=300)
        times.append(time.perf_counter() - start)
    entry = {"command": " ".join(command).replace(sys.executable, "python"), "median_s": statistics.median(times),
             "min_s": min(times), "times_s": times, "returncode": result.returncode}
    if result.returncode:
        entry["error"] = (result.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return entry


def heavy_imports(command: list[str]) -> list[str] | None:
    """Top-level heavy packages a command imports, from `python -X importtime` (None if it failed)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True,
                            cwd=harness.REPO, env=subprocess_environment(), timeout=300)
    if result.returncode:
        return None
    found = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            if module.split(".")[0] in HEAVY:
                found.add(module.split(".")[0])
    return sorted(found)


def time_commands(args) -> tuple[dict, list[str] | None]:
    python = sys.executable
    commands = {
        "python -c pass (interpreter)": [python, "-c", "pass"],
        "python -c 'import elite_cli'": [python, "-c", "import elite_cli"],
        "python -m elite_cli --help": [python, "-m", "elite_cli", "--help"],
    }
    # The script of this interpreter's install (a venv's bin), not another install's first on PATH.
    beside = Path(sys.executable).parent / "elite"
    console_script = str(beside) if beside.is_file() else shutil.which("elite")
    if console_script:
        commands["elite --help (console script)"] = [console_script, "--help"]
    results = {label: time_command(command, args.help_runs) for label, command in commands.items()}
    with tempfile.TemporaryDirectory(prefix="elite-startup-") as home:
        # The first run creates and migrates the index; the timed runs open it as users do.
        time_command([python, "-m", "elite_cli", "list"], 1, ELITE_HOME=home)
        results["python -m elite_cli list (empty library)"] = time_command([python, "-m", "elite_cli", "list"],
                                                                            args.help_runs, ELITE_HOME=home)
    return results, heavy_imports(["-m", "elite_cli", "--help"])


def time_loading(args) -> tuple[dict, dict]:
    """Interleaved loads: plain pipeline, like-for-like, elite. Returns (results, first imports)."""
    start = time.perf_counter()
    import torch

    torch_import = time.perf_counter() - start
    start = time.perf_counter()
    harness.quiet_libraries()
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPVisionModel

    import elite_cli.model.loading as elite_models
    from elite_cli.model.mappers import load_mapper_state

    library_import = time.perf_counter() - start
    spec = harness.model_spec(args)
    device = elite_models.resolve_device(spec.device)
    dtype = elite_models.resolve_dtype(spec.dtype, device)

    def plain_pipeline():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is `dtype` from diffusers 0.42
            pipe = StableDiffusionPipeline.from_pretrained(spec.base_model, torch_dtype=dtype, safety_checker=None,
                                                           feature_extractor=None, requires_safety_checker=False)
        return pipe.to(device)

    def like_for_like():
        vision = CLIPVisionModel.from_pretrained(spec.image_encoder, torch_dtype=dtype).to(device)
        mappers = [{k: v.to(device=device, dtype=dtype) for k, v in load_mapper_state(path).items()}
                   for path in (spec.global_mapper, spec.local_mapper)]
        return plain_pipeline(), vision, mappers

    def forget():
        # load_models caches per spec for the CLI's sake; a benchmark needs every load fresh.
        elite_models.forget_models(spec)

    def elite():
        forget()
        return elite_models.load_models(spec)

    loaders = {"diffusers StableDiffusionPipeline.from_pretrained": plain_pipeline,
               "from_pretrained of everything elite loads (pipeline + CLIP vision + mapper files)": like_for_like,
               "elite load_models": elite}
    times: dict[str, list[float]] = {label: [] for label in loaders}
    for index in range(args.warmup + args.runs):
        for label, load in loaders.items():
            harness.synchronize(device)
            start = time.perf_counter()
            loaded = load()
            harness.synchronize(device)
            if index >= args.warmup:
                times[label].append(time.perf_counter() - start)
            del loaded
            forget()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results = {label: {"median_s": statistics.median(values), "min_s": min(values), "times_s": values}
               for label, values in times.items()}
    imports = {"import torch (first, in process)": torch_import,
               "import diffusers + transformers + elite_cli.model.loading (first)": library_import}
    return results, imports, device, dtype


# The child of the breakdown: `elite add PICTURE`'s steps one by one, each timed (wall, CPU).
BREAKDOWN_CHILD = r"""
import json, resource, sys, time

def clock():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime

marks = [("start", *clock())]
def mark(label):
    marks.append((label, *clock()))

import elite_cli.commands as cli
mark("import the CLI (elite_cli.commands, typer)")
from elite_cli.api import check_local_mappers
spec = cli.model_spec()
check_local_mappers(spec)
mark("settings and mapper file heads (no torch)")
import torch
mark("import torch")
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel
mark("import transformers (CLIP models)")
from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
mark("import diffusers (UNet, VAE, scheduler)")
from elite_cli.model.loading import load_models
models = load_models(spec)
mark("load_models (read weights, build, move to the device)")
from elite_cli.model.encoder import Encoder
Encoder(models).encode(sys.argv[1])
mark("work: one encode (what `elite add --mask none` does)")
phases = [(label, wall - marks[i][1], cpu - marks[i][2]) for i, (label, wall, cpu) in enumerate(marks[1:])]
print(json.dumps(phases))
"""


def time_breakdown(args) -> dict:
    """Medians over fresh processes of each phase of a model command, and the real command's wall time."""
    from PIL import Image, ImageDraw

    spec = harness.model_spec(args)
    settings = {"ELITE_BASE_MODEL": spec.base_model, "ELITE_IMAGE_ENCODER": spec.image_encoder,
                "ELITE_GLOBAL_MAPPER": spec.global_mapper, "ELITE_LOCAL_MAPPER": spec.local_mapper,
                "ELITE_DEVICE": spec.device, "ELITE_DTYPE": spec.dtype}
    phases: dict[str, dict[str, list[float]]] = {}
    children, commands = [], []
    with tempfile.TemporaryDirectory(prefix="elite-breakdown-") as scratch:
        picture = Path(scratch) / "object.png"
        image = Image.new("RGB", (512, 512), (128, 128, 128))
        ImageDraw.Draw(image).ellipse((128, 128, 384, 384), fill=(200, 40, 40))
        image.save(picture)
        for run in range(args.breakdown_runs):
            env = subprocess_environment(**settings, ELITE_HOME=str(Path(scratch) / f"home-{run}"))
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", BREAKDOWN_CHILD, str(picture)], capture_output=True,
                                    text=True, cwd=harness.REPO, env=env, timeout=900)
            children.append(time.perf_counter() - start)
            if result.returncode:
                raise RuntimeError(f"breakdown child failed: {result.stderr.strip()[-400:]}")
            for label, wall, cpu in json.loads(result.stdout.strip().splitlines()[-1]):
                phases.setdefault(label, {"wall_s": [], "cpu_s": []})
                phases[label]["wall_s"].append(wall)
                phases[label]["cpu_s"].append(cpu)
            if args.breakdown_without_command:
                continue
            # The command itself, in its own fresh library, for the same picture.
            env = subprocess_environment(**settings, ELITE_HOME=str(Path(scratch) / f"cli-{run}"))
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "elite_cli", "add", str(picture), "--mask", "none"], capture_output=True,
                                    text=True, cwd=harness.REPO, env=env, timeout=900)
            commands.append(time.perf_counter() - start)
            if result.returncode:
                raise RuntimeError(f"elite add failed: {result.stderr.strip()[-400:]}")
    measured = {label: {"wall_s": statistics.median(values["wall_s"]), "cpu_s": statistics.median(values["cpu_s"])}
                for label, values in phases.items()}
    child = statistics.median(children)
    measured["interpreter start and exit (the rest of the child's wall time)"] = {
        "wall_s": max(0.0, child - sum(entry["wall_s"] for entry in measured.values())), "cpu_s": None}
    for entry in measured.values():
        entry["share_of_wall"] = entry["wall_s"] / child
    command = statistics.median(commands) if commands else None
    return {"phases": measured, "child_wall_s": child, "elite_add_wall_s": command,
            "elite_add_vs_child": None if command is None else command / child}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    commands, imported = time_commands(args)
    rows = [[label, harness.format_seconds(entry["median_s"]), harness.format_seconds(entry["min_s"]),
             "ok" if not entry["returncode"] else f"exit {entry['returncode']}: {entry.get('error', '')[:60]}"]
            for label, entry in commands.items()]
    harness.print_table(f"Commands (fresh processes, median of {args.help_runs})", ["command", "median", "min", "status"], rows)
    print(f"heavy libraries imported by `python -m elite_cli --help`: "
          f"{'(command failed)' if imported is None else ', '.join(imported) or 'none'}")

    loading, imports, device, dtype = ({}, {}, None, None)
    if not args.skip_load:
        loading, imports, device, dtype = time_loading(args)
        baseline = loading["from_pretrained of everything elite loads (pipeline + CLIP vision + mapper files)"]["median_s"]
        pipeline = loading["diffusers StableDiffusionPipeline.from_pretrained"]["median_s"]
        rows = [[label, harness.format_seconds(entry["median_s"]), harness.format_ratio(entry["median_s"] / pipeline),
                 harness.format_ratio(entry["median_s"] / baseline)] for label, entry in loading.items()]
        rows += [[label, harness.format_seconds(value), "-", "-"] for label, value in imports.items()]
        harness.print_table(f"Loading ({args.size} models, {device}, {str(dtype).replace('torch.', '')}, median of {args.runs})",
                            ["load", "median", "vs pipeline", "vs like-for-like"], rows)

    breakdown = time_breakdown(args) if args.breakdown_runs else None
    if breakdown:
        rows = [[label, harness.format_seconds(entry["wall_s"]), f"{entry['share_of_wall']:.1%}",
                 harness.format_seconds(entry["cpu_s"])] for label, entry in breakdown["phases"].items()]
        rows.append(["total (the child process)", harness.format_seconds(breakdown["child_wall_s"]), "100.0%", "-"])
        if breakdown["elite_add_wall_s"] is not None:
            rows.append(["`python -m elite_cli add` of the same picture",
                         harness.format_seconds(breakdown["elite_add_wall_s"]),
                         harness.format_ratio(breakdown["elite_add_vs_child"]), "-"])
        harness.print_table(f"Where a model command's time goes ({args.size} models, median of {args.breakdown_runs})",
                            ["phase", "wall", "share", "CPU"], rows)

    help_entry = commands.get("elite --help (console script)") or commands["python -m elite_cli --help"]
    help_ok = not help_entry["returncode"]
    targets = [
        harness.target("`elite --help` seconds", help_entry["median_s"] if help_ok else None, HELP_LIMIT_S,
                       note=help_entry["command"] if help_ok else f"command failed: {help_entry.get('error', '')[:80]}"),
        harness.target("heavy libraries imported by --help", None if imported is None else len(imported), 0,
                       note=", ".join(imported or []) or "torch must stay lazy"),
    ]
    if loading:
        elite_load = loading["elite load_models"]["median_s"]
        like = loading["from_pretrained of everything elite loads (pipeline + CLIP vision + mapper files)"]["median_s"]
        targets.append(harness.target("load_models / like-for-like from_pretrained", elite_load / like, 1.10,
                                      applies=harness.counts(args, device), note="no issue target; 1.10 is a sanity bound"))
    harness.print_targets(targets)
    payload = {"settings": {"help_runs": args.help_runs, "load_runs": args.runs, "load_warmup": args.warmup,
                            "dtype": None if dtype is None else str(dtype).replace("torch.", "")},
               "commands": commands, "help_heavy_imports": imported, "loading": loading, "first_imports_s": imports,
               "breakdown": breakdown, "targets": targets}
    payload["json_path"] = str(harness.write_json(NAME, args, payload, device))
    return payload


if __name__ == "__main__":
    main()
