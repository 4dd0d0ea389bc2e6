"""The reference's training augmentations, written with PIL, numpy and torch.

The reference uses albumentations (global stage) and cv2 (local stage); neither is a
dependency here, and torchvision must not become one. What is reproduced, and how:

Global stage, CLIP input of the whole crop (reference: albumentations Compose):
  - Resize to the encoder size (bilinear, as A.Resize).
  - Horizontal flip, p = 0.5.
  - Rotation, uniform in [-20, 20] degrees, p = 0.5 (A.Rotate's default p), reflected border.
  - Box blur, p = 0.3, odd kernel 3..7 (A.Blur's default blur_limit), reflected border.
  - "Elastic", p = 0.3. Albumentations' ElasticTransform at its defaults then (alpha=1,
    sigma=50, alpha_affine=50) is dominated by its random affine part: three anchor points
    moved by up to 50 px at 224 px. We implement that affine part (scaled to the encoder size)
    and leave out the per-pixel displacement field, whose amplitude at alpha=1 is under a pixel.
Local stage, object image and its mask (reference: aug_cv2), each with p = 0.5:
  - Resize to a random size in [224, 256] (scaled to the encoder size) and crop back at a random
    corner (bicubic for the image, nearest for the mask).
  - Rotation, uniform integer degrees in [-30, 30], black border.
  - Translation by up to 60 px (scaled) in x and y, black border.
Local stage, diffusion target (reference: custom_aug, from Custom Diffusion): random rescale
  of the crop to 1/3..1x of the resolution (pasted on black, the caption then says "a far away"
  or "very small") or 1.2..1.4x (centre-cropped at random, "zoomed in" / "close up"), and the
  matching valid-region mask at latent resolution, shrunk by one latent pixel on every side
  for pasted crops.

Every function takes a numpy Generator, so a sample's augmentation is fixed by the seed that
made the generator (exact resumption does not depend on worker processes).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

# Reference sizes, all at the 224 px CLIP input; scaled by size / 224 for other encoders.
REFERENCE_CLIP_SIZE = 224
ROTATE_GLOBAL_DEGREES = 20
ELASTIC_AFFINE_PX = 50
LOCAL_RESIZE_MAX = 256
ROTATE_LOCAL_DEGREES = 30
TRANSLATE_LOCAL_PX = 60


def _warp(array: np.ndarray, inverse: np.ndarray, mode: str, padding: str) -> np.ndarray:
    """Resample an [H, W, C] uint8 array: output pixel (x, y) reads input `inverse @ (x, y, 1)`."""
    import torch
    import torch.nn.functional as F

    height, width = array.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    ones = torch.ones_like(xs)
    points = torch.stack([xs, ys, ones], dim=-1) @ torch.from_numpy(inverse).T  # [H, W, 2] input pixel coords
    # Pixel centres to grid_sample's [-1, 1] (align_corners=False).
    grid = torch.stack([(2 * points[..., 0] + 1) / width - 1, (2 * points[..., 1] + 1) / height - 1], dim=-1)
    source = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)[None]
    out = F.grid_sample(source, grid[None].float(), mode=mode, padding_mode=padding, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)


def _rotation(degrees: float, centre_x: float, centre_y: float) -> np.ndarray:
    """Inverse map (output -> input) of a rotation by `degrees` about a centre, as [2, 3]."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # input = R(angle) (output - c) + c
    return np.array([[cos, -sin, centre_x - cos * centre_x + sin * centre_y],
                     [sin, cos, centre_y - sin * centre_x - cos * centre_y]])


def _affine_from_points(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The [2, 3] map sending each target point to its source point (three point pairs)."""
    design = np.hstack([target, np.ones((3, 1))])
    return np.linalg.solve(design, source).T


def _box_blur(array: np.ndarray, kernel: int) -> np.ndarray:
    # PIL's BoxBlur(r) averages a (2r + 1)-wide box, reflecting at the border.
    return np.asarray(Image.fromarray(array).filter(ImageFilter.BoxBlur(kernel // 2)))


def augment_global_clip(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """CLIP input of the global stage: [H, W, 3] uint8 crop -> [size, size, 3] uint8."""
    scale = size / REFERENCE_CLIP_SIZE
    out = np.asarray(Image.fromarray(image).resize((size, size), resample=Image.BILINEAR))
    if rng.random() < 0.5:
        out = out[:, ::-1].copy()
    if rng.random() < 0.5:
        angle = rng.uniform(-ROTATE_GLOBAL_DEGREES, ROTATE_GLOBAL_DEGREES)
        centre = (size - 1) / 2
        out = _warp(out, _rotation(angle, centre, centre), "bilinear", "reflection")
    if rng.random() < 0.3:
        out = _box_blur(out, int(rng.choice([3, 5, 7])))
    if rng.random() < 0.3:
        # Albumentations 1.3's anchors (ElasticTransform's affine part): centre ± a third of the
        # short side, so the ±50 px jitter deforms as much as in the reference.
        centre, half = size / 2, size // 3
        anchors = np.array([[centre + half, centre + half], [centre + half, centre - half], [centre - half, centre - half]])
        moved = anchors + rng.uniform(-ELASTIC_AFFINE_PX * scale, ELASTIC_AFFINE_PX * scale, anchors.shape)
        out = _warp(out, _affine_from_points(anchors, moved), "bilinear", "reflection")
    return out


def augment_object(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Local stage object image [S, S, 3] uint8 and its mask [S, S] uint8 (0/255), moved together."""
    size = image.shape[0]
    scale = size / REFERENCE_CLIP_SIZE
    mask = mask[..., None]
    if rng.integers(0, 2) == 0:
        new_size = int(rng.integers(size, int(round(LOCAL_RESIZE_MAX * scale)) + 1))
        image = np.asarray(Image.fromarray(image).resize((new_size, new_size), resample=Image.BICUBIC))
        mask = np.asarray(Image.fromarray(mask[..., 0]).resize((new_size, new_size), resample=Image.NEAREST))[..., None]
        top, left = (int(v) for v in rng.integers(0, new_size - size + 1, 2))
        image = image[top : top + size, left : left + size]
        mask = mask[top : top + size, left : left + size]
    if rng.integers(0, 2) == 0:
        # The reference rotates about pixel (112, 112) of 224, i.e. about size / 2.
        inverse = _rotation(float(rng.integers(-ROTATE_LOCAL_DEGREES, ROTATE_LOCAL_DEGREES + 1)), size / 2, size / 2)
        image = _warp(image, inverse, "bicubic", "zeros")
        mask = _warp(mask, inverse, "nearest", "zeros")
    if rng.integers(0, 2) == 0:
        limit = int(round(TRANSLATE_LOCAL_PX * scale))
        shift_x, shift_y = (int(v) for v in rng.integers(-limit, limit + 1, 2))
        inverse = np.array([[1.0, 0.0, -shift_x], [0.0, 1.0, -shift_y]])
        image = _warp(image, inverse, "bicubic", "zeros")
        mask = _warp(mask, inverse, "nearest", "zeros")
    return np.ascontiguousarray(image), np.ascontiguousarray(mask[..., 0])


def rescale_target(image: np.ndarray, resolution: int, latent_factor: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Local stage diffusion target (reference custom_aug).

    Returns the [resolution, resolution, 3] float32 image in [-1, 1] (black where nothing was
    pasted), the valid-region mask [resolution / latent_factor]^2 float32, and the caption opening.
    """
    latent = resolution // latent_factor
    picture = Image.fromarray(image)
    if rng.integers(0, 3) < 2:
        side = int(rng.integers(resolution // 3, resolution + 1))
    else:
        side = int(rng.integers(int(1.2 * resolution), int(1.4 * resolution)))
    side += side % 2
    valid = np.ones((latent, latent), np.float32)
    if side < 0.6 * resolution:
        opening = str(rng.choice(["a far away", "very small"]))
        half = side // 2
        row, col = (int(v) for v in rng.integers(half, resolution - half + 1, 2))
        small = np.asarray(picture.resize((side, side), resample=Image.BICUBIC)).astype(np.float32) / 127.5 - 1.0
        out = np.zeros((resolution, resolution, 3), np.float32)
        out[row - half : row + half, col - half : col + half] = small
        valid = np.zeros((latent, latent), np.float32)
        inner = slice((row - half) // latent_factor + 1, (row + half) // latent_factor - 1)
        inner_col = slice((col - half) // latent_factor + 1, (col + half) // latent_factor - 1)
        valid[inner, inner_col] = 1.0
        if not valid.any():  # tiny resolutions only: the shrunk region vanished; use the pasted one
            valid[(row - half) // latent_factor : -(-(row + half) // latent_factor),
                  (col - half) // latent_factor : -(-(col + half) // latent_factor)] = 1.0
    elif side > resolution:
        opening = str(rng.choice(["zoomed in", "close up"]))
        half = resolution // 2
        row, col = (int(v) for v in rng.integers(half, side - half + 1, 2))
        large = np.asarray(picture.resize((side, side), resample=Image.BICUBIC)).astype(np.float32) / 127.5 - 1.0
        out = large[row - half : row + half, col - half : col + half]
    else:
        opening = "a"
        out = np.asarray(picture.resize((resolution, resolution), resample=Image.BICUBIC)).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(out), valid, opening
