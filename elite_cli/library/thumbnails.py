"""Small PNG thumbnails for listings, and their uint8-tensor form inside exported bundles."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from elite_cli.errors import FormatError, InputError

if TYPE_CHECKING:
    import torch

THUMBNAIL_SIDE = 128


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(image_path: Path) -> bytes:
    """A PNG at most 128 px on the long side, upright (EXIF orientation applied), RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(image_path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            return _png(image)
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"image '{image_path}' is not a picture PIL can read; use PNG, JPEG or WebP.") from None


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
