"""Training samples: where they come from, how one becomes a training example, how batches are drawn.

Two sources, one record type (`Sample`):
- a folder of pictures with object masks: `name.jpg` + `name_mask.png` (any of jpg, jpeg,
  png, webp, bmp for either; white = object);
- a JSONL manifest, one object per line: {"image": path, "mask": path, "category": str,
  "box": [left, top, right, bottom]}; only "image" is required; relative paths are read
  from the manifest's folder; "box" is the object's box in image pixels (the Open Images
  converter writes it; otherwise the mask's bounding box is used).

Bad samples (missing file, unreadable picture, empty mask, missing mask where the stage needs
one) are skipped and counted, never replaced by zeros: at scan time they are left out of the
set; when decoding fails during training the next sample takes its place and the failure
travels with the batch so the loop can count and log it.

A crop (the object box plus padding) is resized to the square training resolution without
keeping its aspect ratio, as the reference does.

Randomness: an example is a pure function of (seed, epoch, index), so a resumed run draws
exactly the examples an uninterrupted one would, whatever the number of loader workers.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from elite_cli.errors import InputError
from elite_cli.model.images import CLIP_MEAN, CLIP_STD, MASK_THRESHOLD
from elite_cli.training.augment import augment_global_clip, augment_object, rescale_target
from elite_cli.training.captions import TEMPLATES, caption, insert_word_slots

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MASK_SUFFIX = "_mask"
# Crop padding around the object box, in pixels: fixed for the global stage, drawn from
# [10, 20) for the local stage (reference datasets.py).
GLOBAL_PADDING = 10
LOCAL_PADDING = (10, 20)
# How many following samples may stand in for a bad one before the batch gives up.
MAX_STAND_INS = 16


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None = None
    category: str = ""
    box: tuple[int, int, int, int] | None = None  # left, top, right, bottom in image pixels


@dataclass
class SampleSet:
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)


class BadSample(Exception):
    """A sample that cannot be used; the message says why."""


# ---- sources ---------------------------------------------------------------------------------

def scan_folder(folder: Path, need_masks: bool) -> SampleSet:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if p.stem.endswith(MASK_SUFFIX)}
    result = SampleSet([])
    for path in files:
        if path.stem.endswith(MASK_SUFFIX):
            continue
        mask = masks.get(path.stem)
        if mask is None and need_masks:
            result.skipped.append((str(path), f"no mask file {path.stem}{MASK_SUFFIX}.png"))
            continue
        result.samples.append(Sample(path, mask))
    return result


def _manifest_sample(entry: object, base: Path, need_masks: bool) -> Sample:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise BadSample('not an object with an "image" path')
    image = base / entry["image"]
    mask = base / entry["mask"] if isinstance(entry.get("mask"), str) else None
    if not image.is_file():
        raise BadSample(f"image {image} does not exist")
    if mask is not None and not mask.is_file():
        raise BadSample(f"mask {mask} does not exist")
    if mask is None and need_masks:
        raise BadSample("no mask (the local stage needs object masks)")
    box = entry.get("box")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise BadSample('"box" is not [left, top, right, bottom]')
        box = tuple(int(v) for v in box)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise BadSample(f"box {list(box)} is empty")
    return Sample(image, mask, str(entry.get("category", "")), box)


def read_manifest(manifest: Path, need_masks: bool) -> SampleSet:
    result = SampleSet([])
    base = manifest.parent
    with manifest.open("rb") as handle:  # bytes: one line that is not UTF-8 is skipped, not the whole file
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write
            except UnicodeDecodeError:
                result.skipped.append((f"{manifest}:{number}", "not UTF-8 text"))
                continue
            if not line.strip():
                continue
            try:
                result.samples.append(_manifest_sample(json.loads(line), base, need_masks))
            except json.JSONDecodeError as error:
                result.skipped.append((f"{manifest}:{number}", f"not JSON ({error.msg})"))
            except BadSample as error:
                result.skipped.append((f"{manifest}:{number}", str(error)))
    return result


def load_samples(data: str | Path, need_masks: bool) -> SampleSet:
    """The samples of a folder or a .jsonl manifest. Raises InputError when none is usable."""
    path = Path(data)
    if not path.exists():
        raise InputError(f"--data '{path}' does not exist; give a folder of name.jpg + name_mask.png pairs or a .jsonl manifest.")
    if path.is_dir():
        found = scan_folder(path, need_masks)
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        found = read_manifest(path, need_masks)
    else:
        raise InputError(f"--data '{path}' is neither a folder of images with masks nor a .jsonl manifest.")
    if not found.samples:
        reason = f" ({len(found.skipped)} skipped, first: {found.skipped[0][1]})" if found.skipped else ""
        raise InputError(f"--data '{path}' holds no usable training sample{reason}; give name.jpg + name_mask.png pairs or a manifest.")
    return found


# ---- decoding --------------------------------------------------------------------------------

def _open_rgb(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as error:
        raise BadSample(f"cannot read {path}: {error}") from None
    return ImageOps.exif_transpose(image)


def decode_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(RGB uint8 [H, W, 3], object mask bool [H, W], object box) of a sample."""
    image = _open_rgb(sample.image).convert("RGB")
    if sample.mask is None:
        mask = np.ones((image.height, image.width), dtype=bool)
    else:
        mask_image = _open_rgb(sample.mask)
        if mask_image.mode in ("RGBA", "LA"):
            mask_image = mask_image.getchannel("A")
        mask_image = mask_image.convert("L")
        if mask_image.size != image.size:
            # Open Images masks come at their own resolution; the reference resizes them (nearest).
            # Another shape (beyond rounding) is a mask of another picture: stretching it would
            # train on the wrong object.
            (mask_width, mask_height), (width, height) = mask_image.size, image.size
            if (abs(round(height * mask_width / width) - mask_height) > 1
                    and abs(round(width * mask_height / height) - mask_width) > 1):
                raise BadSample(f"mask {sample.mask} is {mask_width}x{mask_height}, not the shape of the "
                                f"{width}x{height} picture")
            mask_image = mask_image.resize(image.size, resample=Image.NEAREST)
        mask = np.asarray(mask_image) > MASK_THRESHOLD
    if not mask.any():
        raise BadSample(f"mask {sample.mask} is empty (no pixel above {MASK_THRESHOLD})")
    if sample.box is not None:
        left, top, right, bottom = sample.box
        if left < 0 or top < 0 or right > image.width or bottom > image.height:
            raise BadSample(f"box {list(sample.box)} lies outside the {image.width}x{image.height} image")
        box = sample.box
    else:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return np.asarray(image), mask, box


def padded_crop(box: tuple[int, int, int, int], pad: int, width: int, height: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    return max(left - pad, 0), max(top - pad, 0), min(right + pad, width), min(bottom + pad, height)


def clip_normalize(array: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3] -> float32 [3, S, S] with CLIP's mean/std."""
    scaled = array.astype(np.float32) / 255.0
    return ((scaled - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)).transpose(2, 0, 1)


# ---- datasets --------------------------------------------------------------------------------

class TrainingExamples:
    """Map-style dataset of one stage. Keys of an example:

    pixels [3, R, R] float in [-1, 1] (the diffusion target), clip_pixels [3, C, C] (CLIP input
    of the whole crop), input_ids [window] long, position (placeholder position), skipped
    (list of "what: why" strings); local stage also object_pixels [3, C, C], object_mask
    [1, C, C] (0/1) and valid [1, R/f, R/f] (where the target holds picture, f the VAE factor).
    """

    def __init__(self, samples: list[Sample], stage: str, tokenizer, resolution: int, clip_size: int,
                 latent_factor: int, seed: int, num_words: int = 5):
        from elite_cli.model.text import PromptEncoder

        if stage not in ("global", "local"):
            raise ValueError(f"`stage` must be 'global' or 'local' but is {stage!r}.")
        self.samples, self.stage = samples, stage
        self.resolution, self.clip_size, self.latent_factor = resolution, clip_size, latent_factor
        self.seed, self.num_words = seed, num_words
        self.prompts = PromptEncoder(tokenizer, None)  # tokenizing only

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        skipped = []
        tries = min(MAX_STAND_INS, len(self.samples))  # never the same bad sample twice
        for attempt in range(tries):
            sample = self.samples[(index + attempt) % len(self.samples)]
            try:
                example = self.make(sample, np.random.default_rng([self.seed, epoch, index, attempt]))
            except BadSample as error:
                skipped.append(f"{sample.image}: {error}")
                continue
            example["skipped"] = skipped
            return example
        what = f"all {tries} training samples" if tries == len(self.samples) else f"{tries} training samples in a row"
        raise InputError(f"{what} could not be read (last: {skipped[-1]}); check --data.")

    def tokens(self, text: str) -> tuple[list[int], int]:
        tokenized = self.prompts.tokenize(text)
        position = tokenized.slots[0][0]
        ids = tokenized.input_ids
        if self.stage == "global":
            ids = insert_word_slots(ids, position, self.num_words - 1, self.prompts.placeholder_id)
        return ids, position

    def make(self, sample: Sample, rng: np.random.Generator) -> dict:
        import torch

        image, mask, box = decode_sample(sample)
        height, width = mask.shape
        template = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))]
        if self.stage == "global":
            left, top, right, bottom = padded_crop(box, GLOBAL_PADDING, width, height)
            crop = image[top:bottom, left:right]
            target = np.asarray(Image.fromarray(crop).resize((self.resolution,) * 2, resample=Image.BICUBIC))
            ids, position = self.tokens(caption(template))
            return {
                "pixels": torch.from_numpy(target.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1),
                "clip_pixels": torch.from_numpy(clip_normalize(augment_global_clip(crop, self.clip_size, rng))),
                "input_ids": torch.tensor(ids, dtype=torch.long),
                "position": torch.tensor(position, dtype=torch.long),
            }
        pad = int(rng.integers(*LOCAL_PADDING))
        left, top, right, bottom = padded_crop(box, pad, width, height)
        crop, crop_mask = image[top:bottom, left:right], mask[top:bottom, left:right]
        target, valid, opening = rescale_target(crop, self.resolution, self.latent_factor, rng)
        ids, position = self.tokens(caption(template, opening))
        size = (self.clip_size,) * 2
        object_rgb = Image.fromarray((crop * crop_mask[..., None]).astype(np.uint8)).resize(size, resample=Image.BICUBIC)
        object_mask = Image.fromarray(crop_mask.astype(np.uint8) * 255).resize(size, resample=Image.NEAREST)
        object_rgb, object_mask = augment_object(np.asarray(object_rgb), np.asarray(object_mask), rng)
        full = np.asarray(Image.fromarray(crop).resize(size, resample=Image.BICUBIC))
        return {
            "pixels": torch.from_numpy(target).permute(2, 0, 1),
            "valid": torch.from_numpy(valid)[None],
            "clip_pixels": torch.from_numpy(clip_normalize(full)),
            "object_pixels": torch.from_numpy(clip_normalize(object_rgb)),
            "object_mask": torch.from_numpy((object_mask > MASK_THRESHOLD).astype(np.float32))[None],
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "position": torch.tensor(position, dtype=torch.long),
        }


def collate(examples: list[dict]) -> dict:
    import torch

    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0] if key != "skipped"}
    batch["skipped"] = [reason for example in examples for reason in example["skipped"]]
    return batch


class EpochBatches:
    """Batch sampler: this process's share of every global batch, forever, from a micro-step on.

    Epoch e is a permutation of the dataset drawn from (seed, e); it is cut into global batches
    of `batch_size * num_processes` (an incomplete last one is dropped, so every process always
    gets full batches), and process r takes slice r of each. Items are (epoch, index) keys.
    """

    def __init__(self, length: int, batch_size: int, num_processes: int, process_index: int, seed: int,
                 start: int = 0):
        self.length, self.batch_size = length, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.start = seed, start
        self.per_epoch = length // (batch_size * num_processes)
        if self.per_epoch < 1:
            raise InputError(
                f"the data holds {length} usable samples but one step needs {batch_size * num_processes} "
                f"(--batch-size {batch_size} x {num_processes} processes); add samples or lower --batch-size."
            )

    def order(self, epoch: int) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        epoch, order = -1, []
        while True:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = self.order(epoch)
            first = (step % self.per_epoch) * self.batch_size * self.num_processes + self.process_index * self.batch_size
            yield [(epoch, index) for index in order[first : first + self.batch_size]]
            step += 1
