"""Helpers for the library tests: random concepts (no model needed) and sample pictures.

"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "library" / "samples"
GLOBAL_FP = "sha256:" + "a" * 64
LOCAL_FP = "sha256:" + "b" * 64


def random_concept(seed: int = 0, width: int = 32, grid: int = 4, global_fp: str = GLOBAL_FP,
                   local_fp: str = LOCAL_FP):
    """A Concept of random values with the real invariants: 5 words, local masked, mask 0/1."""
    import torch

    from elite_cli.model.concept import Concept

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


def _kill_on(target: str, when: int) -> None:
    """Make the `when`-th call of `target` ("os.replace", "Path.unlink", "insert_row") SIGKILL us."""
    import os
    import signal
    from pathlib import Path as PathClass

    from elite_cli.library.store import ConceptStore

    owner, attribute = {"os.replace": (os, "replace"), "Path.unlink": (PathClass, "unlink"),
                        "insert_row": (ConceptStore, "_insert_row")}[target]
    original = getattr(owner, attribute)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == when:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def child(command: str, home: str, name: str, seed: int, kill: tuple[str, int] | None = None,
          start=None) -> None:
    """Body of a library-using child process (forked by the tests, so no slow interpreter start).

    command: "add", "remove" (adds first, unharmed, so that a kill lands inside remove) or
    "churn" (add, rename, tag, replace, remove in a loop until killed from outside).
    kill: (target, n) makes the n-th call of target SIGKILL the process.
    start: an optional multiprocessing.Event to wait on, so that siblings start together.
    """
    from elite_cli.library import ConceptStore

    if start is not None:
        start.wait()
    home = Path(home)
    store = ConceptStore(home)
    picture = make_picture(home.parent / f"{name}-{seed}.png", seed)
    mask = SAMPLES / "coffee_mask.png"
    if command == "remove":
        store.add(random_concept(seed), image_path=picture, mask_path=mask, name=name)
    if kill is not None:
        _kill_on(*kill)
    if command == "add":
        store.add(random_concept(seed), image_path=picture, mask_path=mask, name=name)
    elif command == "remove":
        store.remove(name)
    elif command == "churn":
        # Tensor seeds far from other children's, so that de-duplication never links them.
        while True:
            store.add(random_concept(1000 * seed), image_path=picture, name=name)
            store.rename(name, name + "-x")
            store.tag(name + "-x", "t")
            store.add(random_concept(1000 * seed + 1), image_path=picture, name=name + "-x", replace=True)
            store.remove(name + "-x")
