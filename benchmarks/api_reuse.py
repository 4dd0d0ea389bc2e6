"""Benchmark: ten images through the Python API in one process against ten `elite gen` calls.

A notebook (or the web UI) keeps one `elite_cli.api.Session`: the models load once, then every
`generate` call only denoises. Ten `elite gen` commands start Python, import torch and load the
models ten times. Both sides run in fresh subprocesses on the same library, models and settings
(ten images, seeds S..S+9, one image per call), so the ratio compares whole wall times:

    ratio = (ten `python -m elite_cli gen ...` subprocesses) / (one subprocess: Session + ten generate calls)

Both sides must make the same pixels (checked). The in-process split (model load, ten generate
calls) is reported too. Tiny models on the CPU by default (seconds):

    python benchmarks/api_reuse.py                 # tiny models, CPU
    python benchmarks/api_reuse.py --runs 3 --steps 20
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IMAGES = 10
PROMPT = "<thing> on the beach"

# What the API side runs in its own fresh process: one session, ten generate calls.
API_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from elite_cli.api import Session
session = Session()
settings = json.loads(sys.argv[1])
loaded = None
calls = []
for number in range(settings["images"]):
    call = time.perf_counter()
    session.generate(settings["prompt"], seed=settings["seed"] + number, steps=settings["steps"],
                     width=settings["size"], height=settings["size"], output_dir=settings["output_dir"])
    calls.append(time.perf_counter() - call)
print(json.dumps({"total_s": time.perf_counter() - started, "load_s": session.model_load_seconds, "calls_s": calls}))
"""


def parse(argv: list[str] | None):
    from benchmarks import harness

    parser = harness.tiny_process_parser("api_reuse", __doc__.split("\n\n")[0], runs="repeat both sides this many times",
                                         default_runs=1, steps=10, size=64)
    return harness.parse_tiny_arguments(parser, argv)


def environment_for(home: Path, models) -> dict[str, str]:
    env = {**os.environ, "ELITE_HOME": str(home), "ELITE_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "ELITE_BASE_MODEL": str(models.base_model),
           "ELITE_IMAGE_ENCODER": str(models.image_encoder), "ELITE_GLOBAL_MAPPER": str(models.global_mapper),
           "ELITE_LOCAL_MAPPER": str(models.local_mapper)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_api(env: dict, settings: dict) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", API_SCRIPT, json.dumps(settings)], env=env, capture_output=True,
                            text=True, timeout=1800)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"the API run failed:\n{result.stderr[-2000:]}")
    return {"wall_s": wall, **json.loads(result.stdout.strip().splitlines()[-1])}


def run_cli(env: dict, settings: dict) -> dict:
    times = []
    for number in range(settings["images"]):
        command = [sys.executable, "-m", "elite_cli", "gen", settings["prompt"], "--seed", str(settings["seed"] + number),
                   "--steps", str(settings["steps"]), "--width", str(settings["size"]), "--height", str(settings["size"]),
                   "-o", settings["output_dir"]]
        started = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        times.append(time.perf_counter() - started)
        if result.returncode:
            raise SystemExit(f"`elite gen` failed:\n{result.stderr[-2000:]}")
    return {"wall_s": sum(times), "calls_s": times}


def pixels_by_seed(directory: Path) -> dict[int, bytes]:
    from PIL import Image

    from elite_cli.common.outputs import read_png_parameters

    found = {}
    for path in directory.glob("*.png"):
        with Image.open(path) as image:
            found[int(read_png_parameters(path)["seed"])] = image.convert("RGB").tobytes()
    return found


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    from benchmarks import harness
    from elite_cli.api import Session
    from elite_cli.model.tiny import build_tiny_models

    with tempfile.TemporaryDirectory(prefix="elite-api-reuse-") as scratch:
        scratch = Path(scratch)
        models = build_tiny_models(args.models_dir or scratch / "tiny")
        env = environment_for(scratch / "home", models)
        picture, mask = harness.sample_pictures(scratch / "pictures", size=64)
        os.environ.update({key: value for key, value in env.items() if key.startswith(("ELITE_", "HF_", "TRANSFORMERS_"))})
        with Session(scratch / "home") as session:  # the concept both sides use, added once, not timed
            session.add_concept(picture, mask, name="thing")
        api_runs, cli_runs = [], []
        for run in range(args.runs):
            settings = {"images": IMAGES, "prompt": PROMPT, "seed": args.seed, "steps": args.steps, "size": args.size}
            cli_runs.append(run_cli(env, {**settings, "output_dir": str(scratch / f"cli-{run}")}))
            api_runs.append(run_api(env, {**settings, "output_dir": str(scratch / f"api-{run}")}))
        same = pixels_by_seed(scratch / "api-0") == pixels_by_seed(scratch / "cli-0")
        if not same:
            raise SystemExit("the API and `elite gen` made different images for the same seeds")
    api_wall = statistics.median(run["wall_s"] for run in api_runs)
    cli_wall = statistics.median(run["wall_s"] for run in cli_runs)
    api_generate = statistics.median(sum(run["calls_s"]) - (run["load_s"] or 0.0) for run in api_runs)
    payload = {
        "settings": {"images": IMAGES, "steps": args.steps, "size": args.size, "runs": args.runs},
        "same_pixels": same,
        "cli_ten_subprocesses_s": cli_wall,
        "api_one_process_s": api_wall,
        "api_model_load_s": statistics.median(run["load_s"] or 0.0 for run in api_runs),
        "api_ten_generate_without_load_s": api_generate,
        "ratio_cli_over_api": cli_wall / api_wall,
        "runs": {"api": api_runs, "cli": cli_runs},
    }
    print(f"ten images, {args.steps} steps, {args.size}x{args.size}, tiny models on the CPU (median of {args.runs}):")
    print(f"  ten `elite gen` subprocesses     {cli_wall:8.2f} s")
    print(f"  one process, Session + 10 calls  {api_wall:8.2f} s  (model load {payload['api_model_load_s']:.2f} s)")
    print(f"  ratio                            {payload['ratio_cli_over_api']:8.2f}x   (same pixels: {same})")
    harness.write_tiny_json("api_reuse", args, payload)
    return payload


if __name__ == "__main__":
    main()
