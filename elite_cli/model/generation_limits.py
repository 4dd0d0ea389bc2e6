"""The ranges `elite gen` and `elite eval` accept for image settings, checked before any model loads.

Pure Python, so the CLI can refuse a bad value in milliseconds instead of after loading the
models (and before it creates an output folder).
"""

from __future__ import annotations

import math

from elite_cli.errors import InputError

SEED_LIMIT = 2**32  # seeds stay in the range every torch generator and A1111 accept
# SD 1.x is trained at 512 px; past 2048 px one image needs tens of GB and composes badly.
MAX_IMAGE_SIDE = 2048
# lambda scales the local (detail) attention that is added to the usual one: 0 turns it off,
# the reference's inference uses 0.6-0.8, and beyond ~2 it drowns the prompt in the picture's detail.
LAMBDA_RANGE = (0.0, 2.0)
# --scheduler names and the diffusers classes they stand for (the generator makes them).
SCHEDULERS = {
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}


def check_image_settings(*, width: int, height: int, steps: int, guidance_scale: float, llambda: float,
                         seed: int, num_images: int, scheduler: str) -> None:
    """Raise InputError naming the flag and what it accepts for the first value that cannot work."""
    for flag, value in (("--width", width), ("--height", height)):
        if value < 8 or value % 8:
            raise InputError(f"{flag} must be a positive multiple of 8 (e.g. 512), not {value}.")
        if value > MAX_IMAGE_SIDE:
            raise InputError(f"{flag} must be at most {MAX_IMAGE_SIDE} (a multiple of 8; SD 1.x works best at 512), not {value}.")
    if steps < 1:
        raise InputError(f"--steps must be at least 1, not {steps}.")
    if num_images < 1:
        raise InputError(f"-n must be at least 1, not {num_images}.")
    if not 0 <= seed or seed + num_images > SEED_LIMIT:
        raise InputError(f"--seed must be between 0 and {SEED_LIMIT - num_images}, not {seed}.")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise InputError(f"--guidance must be a number 0 or more (e.g. 5), not {guidance_scale:g}.")
    check_lambda(llambda)
    check_scheduler(scheduler)


def check_scheduler(name: str) -> None:
    if name not in SCHEDULERS:
        raise InputError(f"--scheduler '{name}' is not supported; use one of {', '.join(SCHEDULERS)}.")


def check_lambda(llambda: float) -> None:
    low, high = LAMBDA_RANGE
    if not math.isfinite(llambda) or not low <= llambda <= high:
        raise InputError(f"--lambda must be a number from {low:g} to {high:g} (default 0.8; higher keeps more detail), "
                         f"not {llambda:g}.")
