"""The model set of the check: elite's tiny set, optionally with a UNet whose attention is cheaper.

Runs in elite's venv (it uses elite_cli.model.tiny and the current diffusers).

    python make_models.py /work/refcheck-tiny                      # elite_cli.model.tiny.build_tiny_models
    python make_models.py /work/refcheck-tiny-cheap --cheap-unet   # same, UNet attention at 32x32

Why --cheap-unet: the reference's validation draws 64x64 latents and its patched attention
materialises every score matrix. elite's tiny UNet attends at the full 64x64 latent
(4096 tokens, 8 heads: 134M scores per self-attention), which made one reference step take
65-85 s on the shared 2-core machine (over two hours per image). The cheap UNet is the tiny one
with its cross-attention blocks moved one level down (32x32 latent, 1024 tokens): every
attn2 still gets the global and local injection, everything else in the set is unchanged.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

CHEAP_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=32,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cheap-unet", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from elite_cli.model.tiny import TINY_WIDTH, build_tiny_models

    if not args.cheap_unet:
        print(build_tiny_models(args.folder, seed=args.seed))
        return
    import torch
    from diffusers import UNet2DConditionModel

    source = args.folder.with_name(args.folder.name + "-base")
    paths = build_tiny_models(source, seed=args.seed)
    if args.folder.exists():
        shutil.rmtree(args.folder)
    shutil.copytree(source, args.folder)
    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel(cross_attention_dim=TINY_WIDTH, **CHEAP_UNET)
    shutil.rmtree(args.folder / "stable-diffusion" / "unet")
    unet.save_pretrained(args.folder / "stable-diffusion" / "unet")
    print(f"{args.folder}: {paths.base_model.name} with the cheap UNet "
          f"({sum(p.numel() for p in unet.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
