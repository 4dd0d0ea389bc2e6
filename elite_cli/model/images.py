"""Turning a user's picture (and optional object mask) into the CLIP inputs ELITE expects.

The reference expects an object-centred square image and a mask; users bring anything a camera
or an editor produces. Everything here is about closing that gap before the spec's own
preprocessing (ELITE_SPEC.md section 1): bicubic resize to the encoder's size, no crop, CLIP
mean/std normalisation.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from elite_cli.model.concept import CROP_MODES, DEFAULT_CROP, PREPROCESSING_VERSION  # noqa: F401 (re-exported)
from elite_cli.errors import InputError

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Mask pixels above this grey level are object.
MASK_THRESHOLD = 127
# Margin around the mask's bounding box when cropping a square, as a share of its longer side
# (the reference's training crops were padded by 10-20 px on objects of a few hundred px).
CROP_MARGIN = 0.1

ImageSource = Union[str, Path, Image.Image]


@dataclass
class PreparedImage:
    """A square RGB image and its boolean object mask (same size), ready for CLIP preprocessing."""

    image: Image.Image
    mask: np.ndarray  # bool [H, W], True = object
    image_sha256: str
    mask_sha256: str  # "" when the user gave no mask
    crop: str = DEFAULT_CROP  # the CROP_MODES value used
    mask_source: str = "none"  # where the mask came from: "file", "alpha" or "none" (whole picture)


def sha256_tag(data: bytes) -> str:
    """The tagged digest ("sha256:<hex>") elite records for pictures, masks and source files."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _open(source: ImageSource, what: str) -> tuple[Image.Image, str]:
    """Open an image file (or take a PIL image) and return it with the sha256 of its bytes."""
    if isinstance(source, Image.Image):
        return source, sha256_tag(source.tobytes())
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{what} file '{path}' does not exist; pass the path of a PNG, JPEG or WebP image.")
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* is as much a refusal as the error: a user's
            # concept picture never needs more than ~90 megapixels.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{what} '{path}' is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels); "
            "use an image under 90 megapixels."
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{what} '{path}' is not an image PIL can read; use PNG, JPEG or WebP.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{what} '{path}' is corrupt or truncated ({error}); re-export it as PNG or JPEG.") from None
    return image, sha256_tag(data)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale to 8-bit by scaling the full range, not clipping."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any picture as 8-bit RGB the way elite encodes it (16-bit scaled over its full range; PIL's
    own convert("RGB") clips a 16-bit greyscale picture to almost white)."""
    return _split_alpha(image)[0]


def _split_alpha(image: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
    """RGB version of any mode, plus the alpha channel as a bool mask when there is one."""
    image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A")) > MASK_THRESHOLD
        return rgba.convert("RGB"), alpha
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return image, None


def _mask_array(mask: Image.Image) -> np.ndarray:
    mask = _to_8bit(mask)
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        # A cut-out saved as a mask: transparent = background.
        return np.asarray(mask.convert("RGBA").getchannel("A")) > MASK_THRESHOLD
    return np.asarray(mask.convert("L")) > MASK_THRESHOLD


def check_crop(crop: str) -> str:
    if crop not in CROP_MODES:
        raise InputError(f"--crop {crop!r} is not a crop mode; use auto (square pictures whole, others squared "
                         "around the object) or object (the square around the object on any picture).")
    return crop


def square_box(mask: np.ndarray | None, width: int, height: int, crop: str = DEFAULT_CROP) -> tuple[int, int, int, int]:
    """The square (left, top, right, bottom) to crop: the whole square picture (crop "auto"),
    else around the object, or the centre square without one."""
    check_crop(crop)
    if crop == "auto" and width == height:
        return 0, 0, width, height
    side_limit = min(width, height)
    if mask is None or mask.all():
        centre_x, centre_y, side = width / 2, height / 2, side_limit
    else:
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        longer = max(bottom - top, right - left)
        side = min(side_limit, int(round(longer * (1 + 2 * CROP_MARGIN))))
        centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    side = int(side)
    # Keep the object centred but never leave the picture.
    left = int(round(min(max(centre_x - side / 2, 0), width - side)))
    top = int(round(min(max(centre_y - side / 2, 0), height - side)))
    return left, top, left + side, top + side


@dataclass
class Picture:
    """A concept picture decoded and upright: RGB, its transparency as a mask (None without one)."""

    rgb: Image.Image
    alpha: np.ndarray | None  # bool [H, W], True = opaque
    sha256: str  # of the file's bytes

    @property
    def has_transparency(self) -> bool:
        """An alpha channel that leaves some pixel transparent: only then does it mark an object
        (many tools save plain photos as RGBA, every pixel opaque)."""
        return marks_object(self.alpha)


def marks_object(alpha: np.ndarray | None) -> bool:
    return alpha is not None and not alpha.all()


def load_picture(image: ImageSource) -> Picture:
    """Open a picture, apply its EXIF orientation and convert it to 8-bit RGB (alpha kept apart)."""
    picture, image_sha = _open(image, "image")
    rgb, alpha = _split_alpha(ImageOps.exif_transpose(picture))
    return Picture(rgb=rgb, alpha=alpha, sha256=image_sha)


def object_mask(picture: Picture, mask: ImageSource | None = None) -> tuple[np.ndarray, str, str]:
    """The picture's object mask at full size: (bool [H, W], the mask file's sha256 or "", its source).

    The source is "file" (the mask given), "alpha" (the picture's transparency) or "none" (the
    whole picture).
    """
    if mask is not None:
        mask_image, mask_sha = _open(mask, "mask")
        mask_image = ImageOps.exif_transpose(mask_image)
        if mask_image.size != picture.rgb.size:
            raise InputError(
                f"mask is {mask_image.size[0]}x{mask_image.size[1]} but the image is "
                f"{picture.rgb.size[0]}x{picture.rgb.size[1]}; the mask must have the image's size (white = object)."
            )
        found, source = _mask_array(mask_image), "file"
    elif picture.alpha is not None:
        found, mask_sha, source = picture.alpha, "", "alpha"
        if not found.any():
            raise InputError(
                "the picture is fully transparent, and without --mask its transparency marks the object; "
                "pass a mask (white = object) or save the picture without transparency."
            )
    else:
        found, mask_sha, source = np.ones((picture.rgb.size[1], picture.rgb.size[0]), dtype=bool), "", "none"
    if not found.any():
        raise InputError("the object mask is empty (no pixel above 127); paint the object white on black.")
    return found, mask_sha, source


def prepare_image(image: ImageSource, mask: ImageSource | None = None, crop: str = DEFAULT_CROP) -> PreparedImage:
    """Load, orient, convert and square-crop a concept picture and its object mask.

    - EXIF orientation is applied to both image and mask.
    - Palette, greyscale, CMYK and 16-bit images become 8-bit RGB.
    - Without a mask, an image with an alpha channel uses it (transparent = background);
      otherwise the whole picture is the object.
    - Mask pixels > 127 are object; the mask must be the image's size and not empty.
    - crop "auto": a square picture is kept whole (the reference's preprocessing); a non-square
      one is cropped to a square around the object (or the centre square). crop "object": the
      square around the object on any picture.
    """
    check_crop(crop)
    picture = load_picture(image)
    found, mask_sha, source = object_mask(picture, mask)
    rgb = picture.rgb
    box = square_box(found, *rgb.size, crop=crop)
    if box != (0, 0, *rgb.size):
        rgb = rgb.crop(box)
        found = found[box[1] : box[3], box[0] : box[2]]
    return PreparedImage(image=rgb, mask=found, image_sha256=picture.sha256, mask_sha256=mask_sha, crop=crop,
                         mask_source=source)


def _clip_tensor(image: Image.Image, size: int) -> "torch.Tensor":
    import torch

    resized = image.resize((size, size), resample=Image.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (tensor - mean) / std


def clip_inputs(prepared: PreparedImage, size: int, grid: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The CLIP pixel batch [full image, object image] ([2, 3, size, size]) and the grid mask [grid, grid].

    As in the reference, the object image is the picture multiplied by its mask at full
    resolution (black background) and only then resized; the mask is resized with
    nearest-neighbour sampling straight to the encoder's patch grid.
    """
    import torch
    import torch.nn.functional as F

    rgb = np.asarray(prepared.image)
    object_rgb = Image.fromarray((rgb * prepared.mask[..., None]).astype(np.uint8))
    pixels = torch.stack([_clip_tensor(prepared.image, size), _clip_tensor(object_rgb, size)])
    mask = torch.from_numpy(prepared.mask.astype(np.float32))[None, None]
    grid_mask = F.interpolate(mask, size=(grid, grid), mode="nearest")[0, 0]
    return pixels, grid_mask


def alpha_marks_object(image: ImageSource) -> bool:
    """Whether `prepare_image` without a mask takes this picture's object from its alpha channel
    (it has one, and it leaves some pixel transparent)."""
    picture, _ = _open(image, "image")
    _, alpha = _split_alpha(ImageOps.exif_transpose(picture))
    return marks_object(alpha)
