"""The elite side of the check: `elite add` + `elite gen` from a given checkout, as a user runs them.

Runs in elite's venv. The checkout under test is put first on PYTHONPATH, so the same venv
checks any branch (e.g. a worktree before a fix and /work/main after it). Never imported by
elite nor collected by pytest.

    python elite_side.py --checkout /work/main --out /work/refcheck-out/elite-main

Writes to --out: words.npy / local.npy / mask.npy (the stored concept, fp16 values as float32),
words_fp32.npy / local_fp32.npy (the encoder's output before fp16 storage), clip_full.npy /
clip_object.npy / grid_mask.npy (elite's CLIP inputs and patch-grid mask), image_lambda<L>.png
(`elite gen`) and elite.json (the commands run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def elite_env(args, home: Path) -> dict[str, str]:
    models, mappers = Path(args.models), Path(args.mappers)
    env = dict(os.environ)
    env.update(
        ELITE_HOME=str(home),
        ELITE_BASE_MODEL=str(models / "stable-diffusion"),
        ELITE_IMAGE_ENCODER=str(models / "clip-vision"),
        ELITE_GLOBAL_MAPPER=str(mappers / "global_mapper.pt"),
        ELITE_LOCAL_MAPPER=str(mappers / "local_mapper.pt"),
        ELITE_DEVICE="cpu",
        ELITE_DTYPE="float32",  # the reference side runs float32 on the CPU too
        PYTHONPATH=str(Path(args.checkout).resolve()) + os.pathsep + env.get("PYTHONPATH", ""),
        ELITE_CHECKOUT=str(Path(args.checkout).resolve()),
    )
    imported = subprocess.run([sys.executable, "-c", "import elite_cli; print(elite_cli.__file__)"], env=env,
                              cwd=env["ELITE_CHECKOUT"], capture_output=True, text=True, check=True).stdout.strip()
    if not Path(imported).resolve().is_relative_to(Path(args.checkout).resolve()):
        raise SystemExit(f"elite_cli imports from {imported}, not from the checkout {args.checkout}")
    return env


def elite(arguments: list[str], env: dict[str, str], log: list[dict]) -> str:
    command = [sys.executable, "-m", "elite_cli", *arguments]
    # `python -m` puts the working folder first on sys.path: run from the checkout under test.
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=env["ELITE_CHECKOUT"])
    log.append({"command": ["elite", *arguments], "returncode": result.returncode})
    if result.returncode != 0:
        raise SystemExit(f"elite {' '.join(arguments)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def checkout_commit(checkout: str) -> str:
    """The checkout's commit, marked dirty when it has uncommitted changes to tracked files."""
    head = subprocess.run(["git", "-C", checkout, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")


def dump_preprocessing(picture: str, mask: str, out: Path, name: str, prompt: str) -> None:
    """In a child process with the checkout on sys.path: elite's own CLIP inputs and fp32 concept."""
    import torch

    from elite_cli.commands import model_spec
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.images import clip_inputs, prepare_image
    from elite_cli.model.loading import load_models

    models = load_models(model_spec())
    prepared = prepare_image(picture, mask)
    pixels, grid_mask = clip_inputs(prepared, models.image_size, models.grid)
    np.save(out / "clip_full.npy", pixels[0].numpy())
    np.save(out / "clip_object.npy", pixels[1].numpy())
    np.save(out / "grid_mask.npy", grid_mask.numpy())
    if not Path(__import__("elite_cli").__file__).resolve().is_relative_to(Path(os.environ["ELITE_CHECKOUT"])):
        raise SystemExit("the dump imported elite_cli from outside the checkout under test")
    with torch.no_grad():
        concept = Encoder(models).encode(picture, mask)
    np.save(out / "words_fp32.npy", concept.words.numpy())
    np.save(out / "local_fp32.npy", concept.local.numpy())
    # The text contexts elite's generator builds (the stored fp16 w0 injected), beside the reference's.
    from elite_cli.model.text import PromptEncoder

    prompt_encoder = PromptEncoder(models.tokenizer, models.text_encoder)
    with torch.no_grad():
        stored_w0 = torch.from_numpy(np.load(out / "words.npy")[0])
        conditional = prompt_encoder.encode([prompt_encoder.tokenize(prompt)], {name: stored_w0})
        unconditional = prompt_encoder.encode_plain([""])
    np.save(out / "text_context.npy", conditional[0].float().numpy())
    np.save(out / "uncond_context.npy", unconditional[0].float().numpy())
    (out / "prepared.json").write_text(json.dumps({"prepared_size": list(prepared.image.size)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(HERE.parents[2]), help="elite checkout to run (default: this one)")
    parser.add_argument("--models", default="/work/refcheck-tiny", help="elite_cli.model.tiny.build_tiny_models folder")
    parser.add_argument("--mappers", default="/work/refcheck-tiny/mappers-h1024",
                        help="reference-format mappers written by reference_side.py mappers")
    parser.add_argument("--input", default="/work/refcheck-input", help="folder with refcat.png and refcat_bg.png")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="refcat")
    parser.add_argument("--template", default="a photo of a {} on the beach")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--lambda", dest="llambda", type=float, nargs="+", default=[0.8])
    parser.add_argument("--size", type=int, default=512, help="the reference's validation draws 64x64 latents: 512 px")
    parser.add_argument("--arrays-only", action="store_true", help="add the concept, skip elite gen")
    parser.add_argument("--_dump", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    out = Path(args.out)
    picture, mask = Path(args.input) / f"{args.name}.png", Path(args.input) / f"{args.name}_bg.png"
    prompt = args.template.format(f"<{args.name}>")
    if args._dump:
        dump_preprocessing(str(picture), str(mask), out, args.name, prompt)
        return

    commit_at_start = checkout_commit(args.checkout)
    home = out / "home"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = elite_env(args, home)
    log: list[dict] = []
    elite(["add", str(picture), "--mask", str(mask), "--name", args.name], env, log)
    from safetensors import safe_open

    (concept_file,) = (home / "concepts").glob("*.safetensors")
    with safe_open(concept_file, "np") as stored:
        for name in ("words", "local", "mask"):
            np.save(out / f"{name}.npy", stored.get_tensor(name).astype(np.float32))
        metadata = stored.metadata()
    subprocess.run([sys.executable, str(HERE), "--_dump", "--input", args.input, "--name", args.name,
                    "--template", args.template,
                    "--out", str(out), "--models", args.models, "--mappers", args.mappers, "--checkout", args.checkout],
                   env=env, check=True)
    if not args.arrays_only:
        for llambda in args.llambda:
            folder = out / f"gen-lambda{llambda:g}"
            elite(["gen", prompt, "--scheduler", "lms", "--steps", str(args.steps), "--guidance", f"{args.guidance:g}",
                   "--lambda", f"{llambda:g}", "--seed", str(args.seed), "--width", str(args.size),
                   "--height", str(args.size), "--output-dir", str(folder)], env, log)
            (image,) = folder.glob("*.png")
            shutil.copy(image, out / f"image_lambda{llambda:g}.png")
            print(f"elite: wrote {out / f'image_lambda{llambda:g}.png'}", flush=True)
    commit = checkout_commit(args.checkout)
    if commit != commit_at_start:
        commit = f"changed during the run: {commit_at_start} -> {commit}"
    (out / "elite.json").write_text(json.dumps({"checkout": args.checkout, "commit": commit, "prompt": prompt,
                                                "commands": log, "concept_metadata": metadata}, indent=1))
    print(f"elite ({commit}): arrays in {out}")


if __name__ == "__main__":
    main()
