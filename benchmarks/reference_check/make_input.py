"""Write the check's input: a 320x320 square picture and an object mask covering about a third of it.

Deterministic: library/samples/chelsea.png (451x300), its centre 300x300 square, resized to
320x320 with PIL bicubic; the mask is an off-centre ellipse (white = object) saved as an RGB
PNG, because the reference's CustomDatasetWithBG multiplies the HxWx3 picture by the mask array
as read (an L-mode mask would not broadcast there).

    python benchmarks/reference_check/make_input.py /work/refcheck-input
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 320
# Ellipse centre and radii in pixels: pi * 120 * 90 / 320^2 = 33.1 % of the picture, and off-centre,
# so a crop around the mask's bounding box (plus margin) differs from the whole picture.
CENTRE_X, CENTRE_Y, RADIUS_X, RADIUS_Y = 190, 175, 120, 90


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = Path(__file__).resolve().parents[2] / "library" / "samples" / "chelsea.png"
    picture = Image.open(sample).convert("RGB")
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), resample=Image.BICUBIC)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    inside = ((cols + 0.5 - CENTRE_X) / RADIUS_X) ** 2 + ((rows + 0.5 - CENTRE_Y) / RADIUS_Y) ** 2 <= 1.0
    mask = np.repeat((inside * 255).astype(np.uint8)[..., None], 3, axis=2)
    # File names follow the reference's test-data convention: X.png and X_bg.png (the mask).
    picture.save(out / "refcat.png")
    Image.fromarray(mask, "RGB").save(out / "refcat_bg.png")
    print(f"wrote {out / 'refcat.png'} and {out / 'refcat_bg.png'}: {SIDE}x{SIDE}, mask covers {inside.mean():.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/refcheck-input")
