"""What every benchmark shares: model sets, command-line options, timing, memory, output.

Two model sets, both loaded through `elite_cli.model.loading.load_models` so a benchmark measures the
path users run:
- real: Stable Diffusion 1.4 and CLIP ViT-L/14 at their published sizes (configs in
  real_sizes.json) with random weights, plus mappers at the reference sizes (H = 1024). The
  compute is the real compute; nothing is downloaded. Built once into a cache folder.
- tiny: elite_cli.model.tiny's models, so every script also runs in seconds on a CPU (smoke figures).

Timings are medians after warm-up, taken with the device synchronised around each run, and
every comparison is a ratio against a baseline measured in the same process.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
REAL_SIZES = BENCH_DIR / "real_sizes.json"
RESULTS_DIR = BENCH_DIR / "results"
# Bump when the real-size build changes, so stale caches are rebuilt.
REAL_BUILD_VERSION = 1
REAL_MARKER = "elite-bench-real.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- model sets ------------------------------------------------------------------------------

@dataclass
class ModelPaths:
    base_model: Path
    image_encoder: Path
    global_mapper: Path
    local_mapper: Path


def default_models_root() -> Path:
    return Path(os.environ.get("ELITE_BENCH_MODELS", Path.home() / ".cache" / "elite-bench"))


def real_sizes() -> dict:
    return json.loads(REAL_SIZES.read_text())


def build_real_size_models(directory: Path, seed: int = 0) -> ModelPaths:
    """SD 1.4 + CLIP ViT-L/14 + reference-size mappers with random weights, saved like the real ones.

    The tokenizer is elite's tiny offline BPE vocabulary: prompts are always padded to CLIP's 77
    tokens, so the vocabulary changes no compute. The mappers' key/value copies start as the
    UNet's own to_k/to_v (as the reference initialises them), which keeps activations at the
    scale a trained model has.
    """
    import torch

    directory = Path(directory)
    paths = ModelPaths(directory / "stable-diffusion-v1-4", directory / "clip-vit-large-patch14",
                       directory / "global_mapper.safetensors", directory / "local_mapper.safetensors")
    config_hash = hashlib.sha256(REAL_SIZES.read_bytes()).hexdigest()
    marker = directory / REAL_MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("version") == REAL_BUILD_VERSION and recorded.get("configs") == config_hash:
            return paths

    import transformers.utils.logging as transformers_logging

    transformers_logging.set_verbosity_error()
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

    from elite_cli.model.attention import cross_attention_modules
    from elite_cli.model.mappers import GlobalMapper, LocalMapper, module_key, save_mapper_state
    from elite_cli.model.tiny import write_tiny_vocab

    configs = real_sizes()
    torch.manual_seed(seed)
    vocab_file, merges_file = write_tiny_vocab(directory / "vocab")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **configs["text_encoder"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(**configs["unet"])
    vae = AutoencoderKL(**configs["vae"])
    scheduler = PNDMScheduler.from_config(configs["scheduler"])
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(paths.base_model)
    CLIPVisionModel(CLIPVisionConfig(**configs["image_encoder"])).save_pretrained(paths.image_encoder)

    cross = cross_attention_modules(unet)
    kv_shapes = {module_key(name): tuple(module.to_k.weight.shape) for name, module in cross.items()}
    image_width = configs["image_encoder"]["hidden_size"]
    text_width = configs["text_encoder"]["hidden_size"]
    for cls, path in ((GlobalMapper, paths.global_mapper), (LocalMapper, paths.local_mapper)):
        mapper = cls(image_width, configs["mapper_hidden_width"], text_width, kv_shapes)
        state = {name: tensor.detach().clone() for name, tensor in mapper.state_dict().items()}
        for name, module in cross.items():
            state[f"{module_key(name)}_to_k.weight"] = module.to_k.weight.detach().clone()
            state[f"{module_key(name)}_to_v.weight"] = module.to_v.weight.detach().clone()
        save_mapper_state(state, path, {"format": "elite-mapper", "note": "random weights, benchmark only"})
    marker.write_text(json.dumps({"version": REAL_BUILD_VERSION, "configs": config_hash}))
    return paths


def model_paths(size: str, models_dir: Path | None) -> ModelPaths:
    """Build (or reuse) the model set of this size and return its paths."""
    if size == "tiny":
        from elite_cli.model.tiny import build_tiny_models

        tiny = build_tiny_models(models_dir or default_models_root() / "tiny")
        return ModelPaths(tiny.base_model, tiny.image_encoder, tiny.global_mapper, tiny.local_mapper)
    return build_real_size_models(models_dir or default_models_root() / "real")


def model_spec(args, **overrides):
    """The ModelSpec for the command line's model set, device, dtype and attention back end."""
    import dataclasses

    from elite_cli.model.spec import ModelSpec

    paths = model_paths(args.size, args.models_dir)
    spec = ModelSpec(base_model=str(paths.base_model), image_encoder=str(paths.image_encoder),
                     global_mapper=str(paths.global_mapper), local_mapper=str(paths.local_mapper),
                     device=args.device, dtype=args.dtype, attention=args.attention)
    return dataclasses.replace(spec, **overrides)


# ---- command line ----------------------------------------------------------------------------

@dataclass
class SizeDefaults:
    """Per-size defaults: real sizes get the issue's settings, tiny ones finish in seconds."""

    runs: int
    warmup: int
    extra: dict = field(default_factory=dict)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--real", dest="size", action="store_const", const="real",
                      help="SD 1.4 / CLIP ViT-L/14 sizes, random weights (default when CUDA is available)")
    size.add_argument("--tiny", dest="size", action="store_const", const="tiny",
                      help="elite's tiny models: smoke figures in seconds (default without CUDA)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default: float16 on CUDA)")
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "xformers"],
                        help="attention kernel for elite and the plain pipeline (default: xformers on CUDA if installed)")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="folder of the model set; built there on first use "
                             "(default $ELITE_BENCH_MODELS/{real,tiny} or ~/.cache/elite-bench/{real,tiny})")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before timing")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="where to write the JSON (default benchmarks/results/NAME-SIZE-DEVICE.json)")
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None, defaults: dict[str, SizeDefaults]):
    """Parse, fill in the size-dependent defaults, and remember the exact command for the JSON."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", parser.prog, *argv])
    if args.size is None:
        args.size = "real" if cuda_available() and not args.device.startswith(("cpu", "mps")) else "tiny"
    chosen = defaults[args.size]
    if args.runs is None:
        args.runs = chosen.runs
    if args.warmup is None:
        args.warmup = chosen.warmup
    for key, value in chosen.extra.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.runs < 1 or args.warmup < 0:
        raise SystemExit("--runs must be at least 1 and --warmup at least 0.")
    return args


def tiny_process_parser(name: str, description: str, *, runs: str, default_runs: int, steps: int,
                        size: int) -> argparse.ArgumentParser:
    """The options of the benchmarks that time whole generations on the tiny models on the CPU
    (api_reuse, ui_overhead); `runs` says what one run is."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    parser.add_argument("--runs", type=int, default=default_runs, help=f"{runs} (medians; default {default_runs})")
    parser.add_argument("--steps", type=int, default=steps, help=f"denoising steps per image (default {steps})")
    parser.add_argument("--size", type=int, default=size, help=f"image side in pixels (default {size})")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--models-dir", type=Path, default=None, help="tiny models folder (built if missing)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help=f"where to write the JSON (default benchmarks/results/{name}-tiny-cpu.json)")
    return parser


def parse_tiny_arguments(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse, and remember the exact command for the JSON; these benchmarks run the tiny models only."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", parser.prog, *argv])
    return args


def write_tiny_json(name: str, args, payload: dict) -> Path:
    """The JSON of a tiny-model CPU benchmark (tiny_process_parser's): benchmarks/results/NAME-tiny-cpu.json."""
    return write_results(args.json_path or RESULTS_DIR / f"{name}-tiny-cpu.json", name, "tiny", args.command, payload)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---- timing and memory -----------------------------------------------------------------------

def synchronize(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> int | None:
    """Peak bytes allocated by tensors since the last reset (CUDA only; None elsewhere)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def allocated_memory(device) -> int | None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return None


@dataclass
class Measurement:
    times: list[float]
    peak_bytes: int | None = None
    resident_bytes: int | None = None  # allocated before the first run: weights and caches
    last_output: object = None  # what the last timed run returned, for checking the work was real

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def as_dict(self) -> dict:
        return {
            "median_s": self.median,
            "min_s": min(self.times),
            "max_s": max(self.times),
            "runs": len(self.times),
            "times_s": self.times,
            "peak_bytes": self.peak_bytes,
            "peak_gib": None if self.peak_bytes is None else self.peak_bytes / 2**30,
            "resident_bytes": self.resident_bytes,
        }


def tracked_peak_bytes(run: Callable[[], object], weights: list) -> int:
    """Peak bytes of one `run()` on a CPU: the weights of `weights` (modules) plus the largest sum
    of tensor storages the run itself creates that are alive at once (activations, latents,
    temporaries). A dispatch mode sees every storage an operator returns and a weak reference
    says when it is freed. The CPU's stand-in for CUDA's max_memory_allocated with only that
    workload's weights resident; it runs slower, so it is never timed."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    weight_storages = {tensor.untyped_storage().data_ptr() for module in weights
                       for tensor in [*module.parameters(), *module.buffers()]}

    class StorageCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}  # data_ptr -> bytes of storages made during the run
            self.total = self.peak = 0
            self.references: list = []

        def freed(self, key: int) -> None:
            self.total -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                    continue
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size == 0 or key in weight_storages or key in self.live:
                    continue  # views of weights or of storages already counted
                self.live[key] = size
                self.total += size
                self.peak = max(self.peak, self.total)
                self.references.append(weakref.ref(storage, lambda _, key=key: self.freed(key)))
            return out

    counter = StorageCounter()
    with counter:
        run()
    return module_bytes(*weights) + counter.peak


def measure(run: Callable[[], object], *, runs: int, warmup: int, device, track_memory: list | None = None) -> Measurement:
    """Median-ready wall times of `run()`, synchronised, after `warmup` untimed runs.

    The peak memory covers the warm-up and timed runs (reset just before them), so it is the
    peak of this workload with whatever is resident at the start. A CPU has no such counter;
    track_memory (the workload's weight modules) adds one untimed run under tracked_peak_bytes.
    """
    tracked = None
    if track_memory is not None and getattr(device, "type", str(device)) == "cpu":
        tracked = tracked_peak_bytes(run, track_memory)
    reset_peak_memory(device)
    resident = allocated_memory(device)
    for _ in range(warmup):
        run()
    synchronize(device)
    times, output = [], None
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        output = run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Measurement(times, peak_memory(device) if tracked is None else tracked, resident, output)


def module_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


# ---- environment and output ------------------------------------------------------------------

def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device=None, command: str | None = None) -> dict:
    """Device, date, versions and the exact command: everything a figure needs to be reproduced."""
    import torch

    device_name = "cpu"
    if device is not None and getattr(device, "type", "") == "cuda":
        device_name = torch.cuda.get_device_name(device)
    elif device is not None and getattr(device, "type", "") == "mps":
        device_name = "Apple MPS"
    else:
        device_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "device": device_name,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "xformers": _version("xformers"),
        "elite_commit": git_commit(),
    }


def target(name: str, value: float | None, limit: float, *, at_most: bool = True, applies: bool = True,
           note: str = "") -> dict:
    """One of the issue's targets. `met` is None when the figure does not count (smoke runs, skipped)."""
    met = None
    if applies and value is not None:
        met = value <= limit if at_most else value >= limit
    return {"name": name, "value": value, "limit": limit, "kind": "at most" if at_most else "at least",
            "met": met, "note": note if applies else (note or "does not count: only real sizes on CUDA do")}


def counts(args, device) -> bool:
    """Whether targets apply: real sizes on a CUDA device."""
    return args.size == "real" and getattr(device, "type", "") == "cuda"


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.3f} s"


def format_bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(column)), *(len(str(row[i])) for row in rows)) for i, column in enumerate(columns)]
    line = "  ".join("-" * width for width in widths)
    print(f"\n{title}")
    print("  ".join(str(column).ljust(width) for column, width in zip(columns, widths)))
    print(line)
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


def print_targets(targets: list[dict]) -> None:
    if not targets:
        return
    rows = []
    for entry in targets:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[entry["met"]]
        value = entry["value"]
        shown = "-" if value is None else f"{value:.4g}"
        rows.append([entry["name"], shown, f"{entry['kind']} {entry['limit']:g}", verdict, entry["note"]])
    print_table("Targets (issue 6)", ["target", "value", "limit", "verdict", "note"], rows)


def write_json(name: str, args, payload: dict, device=None) -> Path:
    """Write the benchmark's JSON (environment + settings + payload) and return its path."""
    device_label = getattr(device, "type", "cpu") if device is not None else "host"
    path = args.json_path or RESULTS_DIR / f"{name}-{args.size}-{device_label}.json"
    return write_results(path, name, args.size, args.command, payload, device)


def write_results(path: Path, name: str, size: str, command: str, payload: dict, device=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": name, "size": size, "environment": environment(device, command), **payload}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nJSON written to {path}")
    return path


def quiet_libraries() -> None:
    """Progress bars and load chatter would drown the tables."""
    import logging

    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def sample_pictures(directory: Path, size: int = 512) -> tuple[Path, Path]:
    """A deterministic picture with a centred object and its mask, as PNG files (what users pass)."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 5 : size * 4 // 5, size // 4 : size * 3 // 4] = 255
    image_path, mask_path = directory / "object.png", directory / "object_mask.png"
    Image.fromarray(pixels).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def main(argv: list[str] | None = None) -> None:
    """`python benchmarks/harness.py --real` builds the real-size model set ahead of the benchmarks."""
    parser = argparse.ArgumentParser(prog="benchmarks/harness.py", description="Build a benchmark model set and print its paths.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--real", dest="size", action="store_const", const="real")
    size.add_argument("--tiny", dest="size", action="store_const", const="tiny")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = model_paths(args.size or "real", args.models_dir)
    for name, path in vars(paths).items():
        print(f"{name}: {path}")
    print(f"ready in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(REPO))
    main()
