"""Open Images V6 annotations -> a training manifest per stage, as the reference chose its data.

The reference trains its two stages on different data (datasets.py):

- global stage (`OpenImagesDataset`): the box annotations (`test-annotations-bbox.csv`; columns
  ImageID, LabelName, XMin, XMax, YMin, YMax, ...; all 600 classes, no masks). The only filter is
  the box's area share (XMax-XMin)*(YMax-YMin) within [0.02, 0.8]. The segmentation CSV is
  accepted too (its BoxXMin..BoxYMax box is used; masks are not needed).
- local stage (`OpenImagesDatasetWithMask`): the segmentation annotations
  (`test-annotations-object-segmentation.csv`; columns MaskPath, ImageID, LabelName, BoxXMin,
  BoxXMax, BoxYMin, BoxYMax, ...) and the unpacked mask PNGs (`MaskPath` names one). The box
  is the mask's bounding box, computed on the mask resized to the image (nearest) and widened
  to even sizes (data_scripts/cal_bbox_by_seg.py); kept if at least 100 px high and wide and
  neither side shorter than half the other. No area-share filter.

Both read the images folder (`{ImageID}.jpg`) and optionally the class names
(`oidv6-class-descriptions.csv`: LabelName, DisplayName). Every filter can be overridden;
unset ones take the stage's defaults (`STAGE_FILTERS`).

Output: one JSONL line per kept instance, {"image", "category", "box"} for the global stage
(it trains on the whole padded crop, so a mask would only add reads and failure points) and
{"image", "mask", "category", "box"} for the local stage; paths are relative to the manifest's
folder and "box" is [left, top, right, bottom] in pixels of the image as displayed (EXIF
orientation applied, as the training loader reads it). The loader pads the box (10 px global
stage, 10-19 px local stage, as the reference did).

Every dropped row is counted by reason; nothing is silently lost. The manifest appears whole or
not at all (written to a temporary file, then renamed).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from elite_cli.errors import InputError
from elite_cli.model.images import MASK_THRESHOLD

STAGES = ("global", "local")
# The box CSV (`*-annotations-bbox.csv`) and the segmentation CSV (`*-annotations-object-segmentation.csv`);
# each names the normalised box (xmin, xmax, ymin, ymax) its own way.
BOX_CSV_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
SEGMENTATION_CSV_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")
# EXIF orientations that turn the picture by 90 degrees (ImageOps.exif_transpose swaps its sides).
SIDE_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class BoxFilters:
    """Which instances to keep; None turns a filter off."""

    min_area_share: float | None = None  # of the annotation's normalised box
    max_area_share: float | None = None
    min_side: int | None = None  # of the pixel box, both height and width
    min_aspect: float | None = None  # shorter side / longer side of the pixel box

    @property
    def limits_area(self) -> bool:
        return self.min_area_share is not None or self.max_area_share is not None


STAGE_FILTERS = {
    "global": BoxFilters(min_area_share=0.02, max_area_share=0.8),  # datasets.OpenImagesDataset
    "local": BoxFilters(min_side=100, min_aspect=0.5),  # datasets.OpenImagesDatasetWithMask
}


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


def stage_filters(stage: str, **overrides: float | int | None) -> BoxFilters:
    """The stage's reference filters with the given ones replaced (None keeps the stage's)."""
    check_stage(stage)
    for name, value in overrides.items():
        if value is None:
            continue
        if name == "min_side":
            if value < 0:
                raise InputError(f"--min-side must be 0 or more pixels but is {value}.")
        elif not 0.0 <= value <= 1.0:  # area shares and the side ratio are fractions
            raise InputError(f"--{name.replace('_share', '').replace('_', '-')} must be between 0 and 1 but is {value}.")
    return replace(STAGE_FILTERS[stage], **{name: value for name, value in overrides.items() if value is not None})


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise InputError(f"--stage '{stage}' is not supported; use global or local.")


def displayed_size(image_path: Path) -> tuple[int, int]:
    """(width, height) of the picture as shown, EXIF orientation applied; pixels are not decoded.

    The training loader turns pictures upright (ImageOps.exif_transpose) and resizes masks to
    that size, so boxes must be in that frame, not in the stored one.
    """
    with Image.open(image_path) as image:
        width, height = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION)
    return (height, width) if orientation in SIDE_SWAPPING_ORIENTATIONS else (width, height)


def pixel_box(normalised: tuple[float, float, float, float], image_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a normalised (xmin, xmax, ymin, ymax) box, clamped; None if empty.

    Flooring every side reproduces the reference's crop: int(XMin * W - 10) is floor(XMin * W) - 10,
    and the loader pads by those 10 px.
    """
    xmin, xmax, ymin, ymax = normalised
    width, height = image_size
    left, right = (min(max(math.floor(value * width), 0), width) for value in (xmin, xmax))
    top, bottom = (min(max(math.floor(value * height), 0), height) for value in (ymin, ymax))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def box_columns(stage: str, annotations: Path, columns: list[str]) -> tuple[str, str, str, str]:
    """Names of this CSV's normalised (xmin, xmax, ymin, ymax) columns; InputError if the stage cannot use it."""
    present = set(columns)
    if stage == "local":
        missing = [column for column in SEGMENTATION_CSV_COLUMNS if column not in present]
        if missing:
            raise InputError(
                f"--annotations '{annotations}' lacks column {missing[0]}; the local stage needs the segmentation CSV "
                f"(e.g. test-annotations-object-segmentation.csv, columns {', '.join(SEGMENTATION_CSV_COLUMNS)}).")
        return SEGMENTATION_CSV_COLUMNS[3:]
    if all(column in present for column in BOX_CSV_COLUMNS):
        return BOX_CSV_COLUMNS[2:]
    if all(column in present for column in SEGMENTATION_CSV_COLUMNS[1:]):  # masks are not needed
        return SEGMENTATION_CSV_COLUMNS[3:]
    raise InputError(
        f"--annotations '{annotations}' has neither the box CSV's columns ({', '.join(BOX_CSV_COLUMNS)}; "
        f"e.g. test-annotations-bbox.csv) nor the segmentation CSV's ({', '.join(SEGMENTATION_CSV_COLUMNS[1:])}); "
        "the global stage takes either.")


class Skipped(Exception):
    """An annotation row that yields no instance; the message is the reason it is counted under."""


@dataclass
class RowConverter:
    """Turns one annotation row into a manifest entry for `stage`, or raises Skipped."""

    stage: str
    columns: tuple[str, str, str, str]
    filters: BoxFilters
    images_dir: Path
    masks_dir: Path | None
    output_dir: Path
    names: dict[str, str]
    image_sizes: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # rows share images

    def normalised_box(self, row: dict[str, str]) -> tuple[float, float, float, float]:
        try:
            box = tuple(float(row[column]) for column in self.columns)
        except (TypeError, ValueError):  # TypeError: a short row leaves None
            raise Skipped("bad box numbers") from None
        if not all(math.isfinite(value) for value in box):
            raise Skipped("bad box numbers")
        return box

    def image_size(self, image_id: str, image_path: Path) -> tuple[int, int]:
        if image_id not in self.image_sizes:
            try:
                self.image_sizes[image_id] = displayed_size(image_path)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                self.image_sizes[image_id] = None
        size = self.image_sizes[image_id]
        if size is None:
            raise Skipped("image missing or unreadable")
        return size

    def entry(self, row: dict[str, str]) -> dict:
        filters = self.filters
        # The local stage's box comes from the mask; its CSV box matters only to an explicit area filter.
        normalised = self.normalised_box(row) if self.stage == "global" or filters.limits_area else None
        if filters.limits_area:
            xmin, xmax, ymin, ymax = normalised
            area = (xmax - xmin) * (ymax - ymin)
            if (filters.min_area_share is not None and area < filters.min_area_share) or (
                    filters.max_area_share is not None and area > filters.max_area_share):
                raise Skipped("box area share out of range")
        image_path = self.images_dir / f"{row['ImageID']}.jpg"
        size = self.image_size(row["ImageID"], image_path)
        entry = {"image": os.path.relpath(image_path, self.output_dir)}
        if self.stage == "global":
            box = pixel_box(normalised, size)
            if box is None:
                raise Skipped("box empty in pixels")
        else:
            mask_path = self.masks_dir / row["MaskPath"]
            if not mask_path.is_file():
                raise Skipped("mask missing")
            try:
                box = mask_box(mask_path, size)
            except (OSError, SyntaxError, ValueError):
                raise Skipped("mask unreadable") from None
            if box is None:
                raise Skipped("mask empty")
            entry["mask"] = os.path.relpath(mask_path, self.output_dir)
        width, height = box[2] - box[0], box[3] - box[1]
        if filters.min_side is not None and min(width, height) < filters.min_side:
            raise Skipped("object smaller than the minimum size")
        if filters.min_aspect is not None and min(width, height) < filters.min_aspect * max(width, height):
            raise Skipped("object aspect ratio too extreme")
        entry["category"] = self.names.get(row["LabelName"], row["LabelName"])
        entry["box"] = list(box)
        return entry


def convert_open_images(stage: str, annotations: str | Path, images_dir: str | Path, output: str | Path, *,
                        masks_dir: str | Path | None = None, classes: str | Path | None = None,
                        filters: BoxFilters | None = None,
                        progress: Callable[[int], None] | None = None) -> ConversionReport:
    """Write the manifest `output` for `stage` from Open Images annotations; return what was kept and why not.

    `masks_dir` is needed by the local stage only; `filters` defaults to the stage's (STAGE_FILTERS).
    """
    check_stage(stage)
    if stage == "local" and masks_dir is None:
        raise InputError("the local stage needs --masks, the folder of unpacked mask PNGs, with the segmentation CSV "
                         "as --annotations (e.g. test-annotations-object-segmentation.csv).")
    annotations, images_dir, output = Path(annotations), Path(images_dir), Path(output)
    masks_dir = Path(masks_dir) if stage == "local" else None  # the global stage trains on whole crops
    classes = Path(classes) if classes else None
    for flag, path, is_dir in (("--annotations", annotations, False), ("--masks", masks_dir, True),
                               ("--images", images_dir, True), ("--classes", classes, False)):
        if path is not None and not (path.is_dir() if is_dir else path.is_file()):
            kind = "folder" if is_dir else "file"
            raise InputError(f"{flag} '{path}' is not an existing {kind}.")
    # `elite train --data` reads a manifest by its .jsonl (or .json) name.
    if output.is_dir() or output.suffix.lower() not in (".jsonl", ".json"):
        what = "a folder" if output.is_dir() else "not a .jsonl file name"
        raise InputError(f"-o '{output}' is {what}; pass the manifest file to write, e.g. oi-{stage}.jsonl.")
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    report = ConversionReport()
    try:
        with annotations.open(newline="", encoding="utf-8") as source, temporary.open("w", encoding="utf-8") as sink:
            reader = csv.DictReader(source)
            converter = RowConverter(stage, box_columns(stage, annotations, reader.fieldnames or []),
                                     filters if filters is not None else STAGE_FILTERS[stage], images_dir, masks_dir, output.parent,
                                     read_class_names(classes))
            for number, row in enumerate(reader, start=1):
                try:
                    entry = converter.entry(row)
                except Skipped as skipped:
                    report.skipped[str(skipped)] += 1
                else:
                    report.kept += 1
                    sink.write(json.dumps(entry) + "\n")
                if progress is not None:
                    progress(number)
        if report.kept == 0:
            # An empty manifest would only fail later, in `elite train`, without the reasons.
            if report.total == 0:
                raise InputError(f"--annotations '{annotations}' has no annotation rows; nothing was written.")
            reasons = ", ".join(f"{reason}: {count}" for reason, count in report.skipped.most_common())
            raise InputError(f"none of the {report.total} instances passed the {stage} stage's checks ({reasons}); "
                             f"nothing was written. Check --images{' and --masks' if stage == 'local' else ''}, "
                             "or loosen the filters (--min-area, --max-area, --min-side, --min-aspect).")
        os.replace(temporary, output)
    except BaseException:
        # No half-written manifest stays behind (wrong CSV, Ctrl-C, full disk).
        temporary.unlink(missing_ok=True)
        raise
    return report
