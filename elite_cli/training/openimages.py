"""Open Images V6 instance segmentation -> a training manifest (the reference's data).

Input, as downloaded from the Open Images site:
- the segmentation CSV (`test-annotations-object-segmentation.csv`; columns MaskPath, ImageID,
  LabelName, BoxID, BoxXMin, BoxXMax, BoxYMin, BoxYMax, ...),
- the folder where the mask zips were unpacked (`MaskPath` names a PNG there),
- the images folder (`{ImageID}.jpg`),
- optionally the class names (`oidv6-class-descriptions.csv`: LabelName, DisplayName).

Output: one JSONL line per kept instance, {"image", "mask", "category", "box"}, with paths
relative to the manifest's folder and "box" the object's box in image pixels. The training
data loader pads that box (10 px global stage, 10-19 px local stage, as the reference did).

Filters, all from the reference:
- box area share (from the CSV's normalised box) within [0.02, 0.8] (datasets.OpenImagesDataset);
- the mask's bounding box, computed on the mask resized to the image (nearest) and widened to
  even sizes (data_scripts/cal_bbox_by_seg.py), at least 100 px high and wide, and neither side
  shorter than half the other (datasets.OpenImagesDatasetWithMask).
Every dropped row is counted by reason; nothing is silently lost.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from elite_cli.errors import InputError
from elite_cli.images import MASK_THRESHOLD

REQUIRED_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")


@dataclass(frozen=True)
class BoxFilters:
    min_area_share: float = 0.02
    max_area_share: float = 0.8
    min_side: int = 100
    min_aspect: float = 0.5  # shorter side / longer side


@dataclass
class ConversionReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def total(self) -> int:
        return self.kept + sum(self.skipped.values())


def read_class_names(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if rows and rows[0][:2] == ["LabelName", "DisplayName"]:
        rows = rows[1:]
    return {row[0]: row[1] for row in rows if len(row) >= 2}


def mask_box(mask_path: Path, image_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the object as cal_bbox_by_seg.py computes it; None if empty.

    Extremes are inclusive pixel indices, then each extent is widened by one pixel where needed
    (bottom/right first) to make it even.
    """
    with Image.open(mask_path) as mask_image:
        mask = np.asarray(mask_image.convert("L").resize(image_size, resample=Image.NEAREST)) > MASK_THRESHOLD
    if not mask.any():
        return None
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if (bottom - top) % 2 == 1 and bottom + 1 <= height:
        bottom += 1
    if (bottom - top) % 2 == 1 and top - 1 >= 0:
        top -= 1
    if (right - left) % 2 == 1 and right + 1 <= width:
        right += 1
    if (right - left) % 2 == 1 and left - 1 >= 0:
        left -= 1
    return left, top, right, bottom


def convert_open_images(annotations: str | Path, masks_dir: str | Path, images_dir: str | Path, output: str | Path,
                        classes: str | Path | None = None, filters: BoxFilters = BoxFilters(),
                        progress: Callable[[int], None] | None = None) -> ConversionReport:
    """Write the manifest `output` from an Open Images segmentation release; return what was kept and why not."""
    annotations, masks_dir, images_dir, output = Path(annotations), Path(masks_dir), Path(images_dir), Path(output)
    for flag, path, is_dir in (("--annotations", annotations, False), ("--masks", masks_dir, True),
                               ("--images", images_dir, True)):
        if not (path.is_dir() if is_dir else path.is_file()):
            kind = "folder" if is_dir else "file"
            raise InputError(f"{flag} '{path}' is not an existing {kind}.")
    names = read_class_names(Path(classes) if classes else None)
    report = ConversionReport()
    image_sizes: dict[str, tuple[int, int] | None] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    with annotations.open(newline="", encoding="utf-8") as source, temporary.open("w", encoding="utf-8") as sink:
        reader = csv.DictReader(source)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"--annotations '{annotations}' lacks column {missing[0]}; pass an Open Images segmentation CSV.")
        for number, row in enumerate(reader, start=1):
            reason = None
            try:
                area = (float(row["BoxXMax"]) - float(row["BoxXMin"])) * (float(row["BoxYMax"]) - float(row["BoxYMin"]))
            except ValueError:
                reason = "bad box numbers"
            if reason is None and not filters.min_area_share <= area <= filters.max_area_share:
                reason = "box area share out of range"
            image_path = images_dir / f"{row['ImageID']}.jpg"
            mask_path = masks_dir / row["MaskPath"]
            if reason is None:
                if row["ImageID"] not in image_sizes:
                    try:
                        with Image.open(image_path) as image:
                            image_sizes[row["ImageID"]] = image.size
                    except (OSError, UnidentifiedImageError):
                        image_sizes[row["ImageID"]] = None
                if image_sizes[row["ImageID"]] is None:
                    reason = "image missing or unreadable"
                elif not mask_path.is_file():
                    reason = "mask missing"
            box = None
            if reason is None:
                try:
                    box = mask_box(mask_path, image_sizes[row["ImageID"]])
                except (OSError, UnidentifiedImageError):
                    reason = "mask unreadable"
                else:
                    if box is None:
                        reason = "mask empty"
            if reason is None:
                width, height = box[2] - box[0], box[3] - box[1]
                if min(width, height) < filters.min_side:
                    reason = "object smaller than the minimum size"
                elif min(width, height) < filters.min_aspect * max(width, height):
                    reason = "object aspect ratio too extreme"
            if reason is not None:
                report.skipped[reason] += 1
            else:
                report.kept += 1
                entry = {
                    "image": os.path.relpath(image_path, output.parent),
                    "mask": os.path.relpath(mask_path, output.parent),
                    "category": names.get(row["LabelName"], row["LabelName"]),
                    "box": list(box),
                }
                sink.write(json.dumps(entry) + "\n")
            if progress is not None:
                progress(number)
    os.replace(temporary, output)
    return report
