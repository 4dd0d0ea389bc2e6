"""Training benchmark: peak GPU memory and images/s of both ELITE training stages (issue 5).

Real mode (default with CUDA): Stable Diffusion 1.4's UNet, VAE and CLIP text encoder and the
CLIP ViT-L/14 vision tower are built from their published configs with random weights (the
compute and memory are the real ones; nothing is downloaded), the mappers at the reference
size (H = 1024), and the real training loop (`elite_cli.training.loop.Trainer`, the code
`elite train` runs) trains on synthetic 512 px pictures with masks. One row per variant:

    stage, per-GPU batch, precision, gradient checkpointing -> peak allocated / reserved GiB,
    images/s (median step after warm-up)

The issue's figure: the global stage at 512 px with per-GPU batch 4 fits on one 24 GB GPU
(the reference ran out of memory there). `fits_24gb` compares the peak *reserved* memory (what
the allocator really holds) with 24 GB minus 1 GiB for the CUDA context.

CPU smoke mode (`--tiny`, the default without CUDA): the same loop on elite's tiny models at
64 px, in seconds; it checks the plumbing, not the figures.

    python benchmarks/train_bench.py                      # real sizes on the GPU, all variants
    python benchmarks/train_bench.py --tiny               # CPU smoke
    python benchmarks/train_bench.py --variants global-4-fp16,global-4-fp16-ckpt --steps 12
Results: printed table + JSON (`--json PATH`, default benchmarks/results/train-{mode}-{device}.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import harness  # noqa: E402  (after the path set-up, so it runs from a checkout)

GIB = 1024 ** 3
CARD_24GB = 24e9 - GIB  # usable memory of a 24 GB card after the CUDA context

# Parameter counts of the released models: a check that real_sizes.json holds the real configs.
PUBLISHED_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "image_encoder": 303_179_776}

# name: (stage, per-GPU batch, mixed precision, gradient checkpointing)
VARIANTS = {
    "global-4-fp16": ("global", 4, "fp16", False),
    "global-4-fp16-ckpt": ("global", 4, "fp16", True),
    "global-4-bf16": ("global", 4, "bf16", False),
    "global-8-fp16-ckpt": ("global", 8, "fp16", True),
    "local-2-fp16": ("local", 2, "fp16", False),
    "local-4-fp16": ("local", 4, "fp16", False),
}
TINY_VARIANTS = {"global-2-no": ("global", 2, "no", False), "local-2-no": ("local", 2, "no", False)}


def parse_variant(name: str):
    """'global-2-no-ckpt' -> ("global", 2, "no", True); None if it does not parse."""
    parts = name.split("-")
    if len(parts) not in (3, 4) or parts[0] not in ("global", "local") or not parts[1].isdigit():
        return None
    if parts[2] not in ("no", "fp16", "bf16") or (len(parts) == 4 and parts[3] != "ckpt"):
        return None
    return parts[0], int(parts[1]), parts[2], len(parts) == 4


def real_frozen_models(tokenizer_dir: Path):
    """SD 1.4 + CLIP ViT-L/14 from configs, random weights, on the CPU in float32."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

    from elite_cli.model.generator import REFERENCE_SCHEDULER
    from elite_cli.model.tiny import write_tiny_vocab
    from elite_cli.training.components import FrozenModels

    sizes = harness.real_sizes()  # the published configs, shared with the other benchmarks
    torch.manual_seed(0)
    # Token ids only pick rows of the embedding table; a small local vocabulary computes the same.
    vocab, merges = write_tiny_vocab(tokenizer_dir)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(**sizes["text_encoder"], bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(**sizes["unet"])
    vae = AutoencoderKL(**sizes["vae"])
    vision = CLIPVisionModel(CLIPVisionConfig(**sizes["image_encoder"]))
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text), ("image_encoder", vision))}
    for module in (text, unet, vae, vision):
        module.eval().requires_grad_(False)
    config = dict(REFERENCE_SCHEDULER)
    return FrozenModels(tokenizer, text, unet, vae, vision, DDPMScheduler.from_config(config), config), counts


def synthetic_data(folder: Path, count: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[size // 6 : size - size // 5, size // 5 : size - size // 6] = 255
        Image.fromarray(mask).save(folder / f"p{i}_mask.png")
    return folder


def reset_between_variants(frozen) -> None:
    """Undo what the previous variant's Trainer set on the shared models, and free its mapper."""
    import gc

    import torch
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps one process-wide state and refuses a second precision in one process;
    # its own test suite resets it like this between cases.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    if frozen is not None:
        frozen.unet.set_default_attn_processor()  # drops the last mapper's layers
        frozen.unet.disable_gradient_checkpointing()
        frozen.text_encoder.gradient_checkpointing_disable()
        frozen.text_encoder.eval()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_variant(name, stage, batch, precision, checkpointing, args, work: Path, frozen, base, encoder, global_mapper):
    import torch

    from elite_cli.training.loop import StepDone, Trainer
    from elite_cli.training.recipe import TrainConfig

    config = TrainConfig(
        stage=stage, data=str(work / "data"), output=str(work / name), base_model=base, image_encoder=encoder,
        global_mapper=global_mapper if stage == "local" else "", resolution=args.resolution, batch_size=batch,
        gradient_accumulation=1, max_steps=args.warmup + args.steps, checkpoint_every=0, mixed_precision=precision,
        gradient_checkpointing=checkpointing, hidden_width=args.hidden_width, num_workers=args.workers,
        device="cpu" if args.device == "cpu" else "auto", attention=args.attention, seed=0,
    )
    times = []
    cuda = torch.cuda.is_available() and args.device != "cpu"

    def progress(event):
        if isinstance(event, StepDone) and event.step > args.warmup:
            times.append(config.total_batch(1) / event.images_per_second)

    reset_between_variants(frozen)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = {"variant": name, "stage": stage, "batch": batch, "precision": precision, "gradient_checkpointing": checkpointing,
           "resolution": args.resolution}
    try:
        Trainer(config, progress, frozen=frozen).run()
    except torch.cuda.OutOfMemoryError:
        row.update(error="out of memory")
        return row
    finally:
        if cuda:
            torch.cuda.synchronize()
    median = statistics.median(times) if times else float("nan")
    row.update(step_seconds=median, images_per_second=batch / median if times else None)
    if cuda:
        row.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB)
        row["fits_24gb"] = torch.cuda.max_memory_reserved() <= CARD_24GB
    return row


def environment(args) -> dict:
    import diffusers
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__, "commit": commit,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else platform.processor() or "cpu",
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--real", action="store_true", help="SD 1.4 / ViT-L/14 sizes (default with CUDA)")
    mode.add_argument("--tiny", action="store_true", help="elite's tiny models on the CPU (default without CUDA)")
    parser.add_argument("--variants", help=f"comma-separated, from: {', '.join(VARIANTS)} (tiny: {', '.join(TINY_VARIANTS)}), "
                        "or any STAGE-BATCH-PRECISION[-ckpt] such as global-1-no")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--resolution", type=int, help="training size (default 512 real, 64 tiny)")
    parser.add_argument("--hidden-width", type=int, help="mapper width (default 1024 real, 64 tiny)")
    parser.add_argument("--device", default="auto", help="auto or cpu")
    parser.add_argument("--attention", default="auto", help="auto, sdpa or xformers")
    parser.add_argument("--workers", type=int, default=4, help="data-loading processes")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    real = args.real or (not args.tiny and torch.cuda.is_available())
    table = VARIANTS if real else TINY_VARIANTS
    names = args.variants.split(",") if args.variants else list(table)
    for name in names:
        if name not in table:
            parsed = parse_variant(name)
            if parsed is None:
                parser.error(f"variant {name!r} is neither one of {', '.join(table)} nor STAGE-BATCH-PRECISION[-ckpt]")
            table = {**table, name: parsed}
    args.resolution = args.resolution or (512 if real else 64)
    args.hidden_width = args.hidden_width or (1024 if real else 64)
    if not real:
        args.device, args.workers = "cpu", 0

    from elite_cli.model.mappers import save_mapper_state
    from elite_cli.training.components import new_mapper

    with tempfile.TemporaryDirectory(prefix="elite-train-bench-") as temporary:
        work = Path(temporary)
        synthetic_data(work / "data", 16, max(args.resolution, 128))
        if real:
            frozen, counts = real_frozen_models(work / "vocab")
            base, encoder = "SD 1.4 config, random weights", "CLIP ViT-L/14 config, random weights"
        else:
            from elite_cli.model.tiny import build_tiny_models

            tiny = build_tiny_models(work / "tiny")
            frozen, counts = None, {}
            base, encoder = str(tiny.base_model), str(tiny.image_encoder)
        # The local stage needs a global mapper; an untrained one has the real size and cost.
        if frozen is not None:
            reference = frozen
        else:
            from elite_cli.training.components import load_frozen_models

            reference = load_frozen_models(base, encoder)
        global_path = work / "global_mapper.safetensors"
        save_mapper_state(new_mapper("global", reference, args.hidden_width).state_dict(), global_path)
        rows = []
        for name in names:
            stage, batch, precision, checkpointing = table[name]
            row = run_variant(name, stage, batch, precision, checkpointing, args, work, frozen, base, encoder, str(global_path))
            rows.append(row)
            print(json.dumps(row), flush=True)
    mismatched = {name: count for name, count in counts.items() if count != PUBLISHED_PARAMETERS[name]}
    result = {"mode": "real" if real else "tiny", "environment": environment(args), "parameters": counts,
              "parameters_match_published": not mismatched if real else None, "rows": rows}
    global_4 = [row for row in rows if row["variant"].startswith("global-4-fp16") and "peak_reserved_gib" in row]
    result["target_global_512_batch4_fits_24gb"] = (
        any(row["fits_24gb"] for row in global_4) if real and global_4 else None)
    print(f"\n{'variant':<22}{'img/s':>8}{'alloc GiB':>11}{'reserved GiB':>14}  fits 24 GB")
    for row in rows:
        print(f"{row['variant']:<22}{row.get('images_per_second') or float('nan'):>8.2f}"
              f"{row.get('peak_allocated_gib', float('nan')):>11.2f}{row.get('peak_reserved_gib', float('nan')):>14.2f}"
              f"  {row.get('fits_24gb', row.get('error', '-'))}")
    destination = args.json or REPO / "benchmarks" / "results" / f"train-{result['mode']}-{'cuda' if real else 'cpu'}.json"
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {destination}")


if __name__ == "__main__":
    main()
