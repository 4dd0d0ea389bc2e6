"""Figures of the check: the reference's arrays and image against elite's (numpy + PIL only).

    python compare.py REFERENCE_DIR ELITE_DIR [--json OUT.json]

Words / local tokens: max abs difference, the reference's range (max - min), and the max
relative error = max abs difference / max |reference| (fp16 storage alone gives at most
2^-11 = 4.9e-4; the target is <= 2e-3). Image: mean (and max) abs difference in /255 over all
pixels and channels (target <= 0.5/255). Stage rows (CLIP inputs, grid mask, fp32 encoder
output, text context) say where a difference starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS_LOCAL_TARGET = 2e-3
IMAGE_TARGET = 0.5


def array_figures(reference: np.ndarray, candidate: np.ndarray) -> dict:
    if reference.shape != candidate.shape:
        return {"shape_reference": list(reference.shape), "shape_elite": list(candidate.shape)}
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    scale = float(np.abs(reference).max())
    return {
        "max_abs": float(difference.max()),
        "range": float(reference.max() - reference.min()),
        "max_rel": float(difference.max() / scale) if scale else float(difference.max()),
        "mean_abs": float(difference.mean()),
    }


def image_figures(reference: Path, candidate: Path) -> dict:
    first = np.asarray(Image.open(reference).convert("RGB"), dtype=np.float64)
    second = np.asarray(Image.open(candidate).convert("RGB"), dtype=np.float64)
    if first.shape != second.shape:
        return {"shape_reference": list(first.shape), "shape_elite": list(second.shape)}
    difference = np.abs(first - second)
    return {"mean_abs_255": float(difference.mean()), "max_abs_255": float(difference.max()),
            "share_of_pixels_differing": float((difference.max(axis=2) > 0).mean())}


def compare(reference_dir: Path, elite_dir: Path) -> dict:
    figures: dict = {"reference": str(reference_dir), "elite": str(elite_dir)}
    elite_json = elite_dir / "elite.json"
    if elite_json.exists():
        figures["elite_commit"] = json.loads(elite_json.read_text())["commit"]
    pairs = {
        "clip_full": ("clip_full.npy", "clip_full.npy"),
        "clip_object": ("clip_object.npy", "clip_object.npy"),
        "grid_mask": ("grid_mask.npy", "grid_mask.npy"),
        "words_fp32": ("words.npy", "words_fp32.npy"),
        "local_fp32": ("local.npy", "local_fp32.npy"),
        "words": ("words.npy", "words.npy"),
        "local": ("local.npy", "local.npy"),
        "text_context": ("text_context.npy", "text_context.npy"),
        "uncond_context": ("uncond_context.npy", "uncond_context.npy"),
    }
    for name, (ref_name, elite_name) in pairs.items():
        if (reference_dir / ref_name).exists() and (elite_dir / elite_name).exists():
            figures[name] = array_figures(np.load(reference_dir / ref_name), np.load(elite_dir / elite_name))
    for image in sorted(reference_dir.glob("image_lambda*.png")):
        if (elite_dir / image.name).exists():
            figures[image.stem] = image_figures(image, elite_dir / image.name)
    # The local branch's whole effect on the reference's own image: the yardstick for the image figure.
    with_local, without_local = reference_dir / "image_lambda0.8.png", reference_dir / "image_lambda0.png"
    if with_local.exists() and without_local.exists():
        figures["reference_local_branch_effect"] = image_figures(without_local, with_local)
    verdicts = {}
    for name in ("words", "local"):
        if "max_rel" in figures.get(name, {}):
            verdicts[name] = figures[name]["max_rel"] <= WORDS_LOCAL_TARGET
    if "mean_abs_255" in figures.get("image_lambda0.8", {}):
        verdicts["image"] = figures["image_lambda0.8"]["mean_abs_255"] <= IMAGE_TARGET
    figures["targets_met"] = verdicts
    return figures


def table(figures: dict) -> str:
    lines = [f"reference: {figures['reference']}", f"elite:     {figures['elite']} ({figures.get('elite_commit', '?')})",
             "", "| what | max abs | range | max rel | mean abs |", "|---|---|---|---|---|"]
    for name in ("clip_full", "clip_object", "grid_mask", "words_fp32", "local_fp32", "words", "local",
                 "text_context", "uncond_context"):
        row = figures.get(name)
        if row is None:
            continue
        if "max_abs" not in row:
            lines.append(f"| {name} | shapes differ: {row} | | | |")
            continue
        lines.append(f"| {name} | {row['max_abs']:.3g} | {row['range']:.3g} | {row['max_rel']:.3g} | {row['mean_abs']:.3g} |")
    lines += ["", "| image | mean abs /255 | max abs /255 | pixels differing |", "|---|---|---|---|"]
    for name in sorted(key for key in figures if key.startswith("image_lambda") or key.endswith("_effect")):
        row = figures[name]
        if "mean_abs_255" in row:
            lines.append(f"| {name} | {row['mean_abs_255']:.3f} | {row['max_abs_255']:.0f} | "
                         f"{row['share_of_pixels_differing']:.1%} |")
    lines += ["", f"targets met (words/local max rel <= {WORDS_LOCAL_TARGET}, image <= {IMAGE_TARGET}/255): "
              f"{figures['targets_met']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("elite", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = compare(args.reference, args.elite)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
