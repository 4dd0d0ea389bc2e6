"""Helpers for the library tests: random concepts (no model needed) and sample pictures.

Also runnable as a script by the crash and concurrency tests:
  python tests/library_support.py add HOME NAME SEED [--hang-after STEP]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "library" / "samples"
GLOBAL_FP = "sha256:" + "a" * 64
LOCAL_FP = "sha256:" + "b" * 64


def random_concept(seed: int = 0, width: int = 32, grid: int = 4, global_fp: str = GLOBAL_FP,
                   local_fp: str = LOCAL_FP):
    """A Concept of random values with the real invariants: 5 words, local masked, mask 0/1."""
    import torch

    from elite_cli.concept import Concept

    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(grid, grid, generator=generator) > 0.3).float()
    local = torch.randn(grid * grid, width, generator=generator) * mask.reshape(-1, 1)
    words = torch.randn(5, width, generator=generator)
    provenance = {"global_mapper": global_fp, "local_mapper": local_fp, "base_model": "tiny/sd",
                  "image_encoder": "tiny/clip"}
    return Concept(words=words, local=local, mask=mask, provenance=provenance)


def make_picture(path: Path, seed: int, size: int = 24) -> Path:
    """A small unique PNG (distinct bytes per seed, so distinct image sha256)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _main(argv: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from elite_cli.library import ConceptStore

    command, home, name, seed = argv[0], Path(argv[1]), argv[2], int(argv[3])
    store = ConceptStore(home)
    picture = make_picture(home.parent / f"{name}.png", seed)
    if command == "add":
        store.add(random_concept(seed), image_path=picture, name=name)
    elif command == "add-forever":  # add then remove in a loop until killed
        while True:
            store.add(random_concept(seed), image_path=picture, name=name)
            store.remove(name)
    print("done", flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
