"""Small PNG thumbnails for listings, and their uint8-tensor form inside exported bundles."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from elite_cli.errors import FormatError, InputError

if TYPE_CHECKING:
    import torch

THUMBNAIL_SIDE = 128
PREVIEW_SIDE = 256
# The preview keeps the object as it is and dims the background towards blue, so that what the
# local mapper will see stands out; the square the encoder gets is outlined in yellow.
PREVIEW_BACKGROUND = (30, 60, 160)
PREVIEW_DIM = 0.35
PREVIEW_BOX = (255, 210, 0)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(image_path: Path) -> bytes:
    """A PNG at most 128 px on the long side, upright (EXIF orientation applied), RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from elite_cli.model.images import to_rgb

    try:
        with Image.open(image_path) as image:
            image = to_rgb(ImageOps.exif_transpose(image))
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            return _png(image)
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"image '{image_path}' is not a picture PIL can read; use PNG, JPEG or WebP.") from None


def preview_png(image_path: Path, mask_path: Path | None, crop: str = "auto") -> bytes:
    """A PNG at most 256 px on the long side of the picture (upright) with its object mask
    overlaid (from `mask_path`, else the picture's transparency) and the square the encoder
    takes outlined: what `elite add` prints so that an automatic mask can be checked by eye."""
    import numpy as np
    from PIL import Image, ImageDraw

    from elite_cli.model.images import load_picture, object_mask, square_box

    picture = load_picture(image_path)
    found, _, _ = object_mask(picture, mask_path)
    width, height = picture.rgb.size
    box = square_box(found, width, height, crop)
    scale = min(1.0, PREVIEW_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = np.asarray(picture.rgb.resize(size, Image.BILINEAR), dtype=np.float32)
    small_mask = np.asarray(Image.fromarray(found.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    background = rgb * PREVIEW_DIM + np.asarray(PREVIEW_BACKGROUND, dtype=np.float32) * (1 - PREVIEW_DIM)
    composed = np.where(small_mask[..., None], rgb, background)
    image = Image.fromarray(np.clip(composed + 0.5, 0, 255).astype(np.uint8), "RGB")
    left, top, right, bottom = (round(value * scale) for value in box)
    ImageDraw.Draw(image).rectangle((left, top, max(left, right - 1), max(top, bottom - 1)), outline=PREVIEW_BOX,
                                    width=max(1, round(max(size) / 128)))
    return _png(image)


def placeholder_thumbnail() -> bytes:
    """Mid-grey square for concepts whose source image is not kept (imported, or sources lost)."""
    from PIL import Image

    return _png(Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (128, 128, 128)))


def png_to_tensor(data: bytes) -> "torch.Tensor":
    """uint8 [H, W, 3] for the bundle's `thumbnail` tensor."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())


def tensor_to_png(tensor: "torch.Tensor") -> bytes:
    from PIL import Image

    if tensor.ndim != 3 or tensor.shape[2] != 3:
        raise FormatError("a bundle thumbnail must be uint8 [H, W, 3].")
    return _png(Image.fromarray(tensor.numpy(), mode="RGB"))
