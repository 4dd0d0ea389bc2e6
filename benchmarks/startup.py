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
   - `elite_cli.models.load_models(spec)`.

    python benchmarks/startup.py --real --device cuda --dtype float16   # figures
    python benchmarks/startup.py --tiny                                 # CPU smoke
"""

from __future__ import annotations

import gc
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
    "real": harness.SizeDefaults(runs=3, warmup=1, extra=dict(help_runs=10)),
    "tiny": harness.SizeDefaults(runs=2, warmup=0, extra=dict(help_runs=3)),
}
HELP_LIMIT_S = 0.5
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "xformers")


def parse(argv):
    parser = harness.parser(NAME, "Start-up time of the CLI and model loading against plain from_pretrained.")
    parser.add_argument("--help-runs", dest="help_runs", type=int, default=None,
                        help="subprocess runs per command (default 10; tiny 3)")
    parser.add_argument("--skip-load", action="store_true", help="only time the commands")
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
    console_script = shutil.which("elite")
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

    import elite_cli.models as elite_models
    from elite_cli.mappers import load_mapper_state

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
               "import diffusers + transformers + elite_cli.models (first)": library_import}
    return results, imports, device, dtype


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
               "targets": targets}
    payload["json_path"] = str(harness.write_json(NAME, args, payload, device))
    return payload


if __name__ == "__main__":
    main()
