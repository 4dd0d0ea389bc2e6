"""The Open Images V6 segmentation converter on a hand-made release, and the `elite train` CLI surface."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from elite_cli.errors import InputError
from elite_cli.training.cli import train_app
from elite_cli.training.data import load_samples
from elite_cli.training.openimages import BoxFilters, convert_open_images, mask_box

HEADER = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax", "PredictedIoU", "Clicks"]


def write_mask(path, size, box):
    """A mask PNG at its own resolution (Open Images masks are not the image's size)."""
    array = np.zeros((size[1], size[0]), np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 255
    Image.fromarray(array).save(path)


@pytest.fixture
def release(tmp_path):
    images, masks = tmp_path / "images" / "test", tmp_path / "segs" / "test"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    Image.new("RGB", (400, 300), (90, 90, 90)).save(images / "img1.jpg")
    Image.new("RGB", (400, 300), (20, 20, 20)).save(images / "img2.jpg")
    # Masks at half resolution (200x150); boxes below are in mask pixels.
    cases = {
        # name: (image, mask box, normalised CSV box (xmin, xmax, ymin, ymax))
        "img1_m01_a.png": ("img1", (50, 30, 130, 110), (0.25, 0.65, 0.2, 0.73)),  # 160x160 px object: kept
        "img1_m02_b.png": ("img1", (10, 10, 40, 40), (0.05, 0.2, 0.07, 0.27)),  # area share 0.03, 60 px: too small
        "img1_m03_c.png": ("img1", (0, 0, 200, 150), (0.0, 1.0, 0.0, 1.0)),  # area share 1.0: dropped
        "img2_m01_d.png": ("img2", (20, 40, 180, 100), (0.1, 0.9, 0.27, 0.67)),  # 320x120: aspect 0.375
        "img2_m02_e.png": ("img2", (0, 0, 0, 0), (0.1, 0.5, 0.1, 0.5)),  # empty mask
        "img3_m01_f.png": ("img3", (50, 30, 130, 110), (0.25, 0.65, 0.2, 0.73)),  # image missing
    }
    rows = []
    for name, (image_id, box, (x0, x1, y0, y1)) in cases.items():
        write_mask(masks / name, (200, 150), box)
        label = "/m/01" if "m01" in name else "/m/02"
        rows.append([name, image_id, label, "b", x0, x1, y0, y1, 0.9, ""])
    rows.append(["img1_m09_missing.png", "img1", "/m/02", "b", 0.2, 0.6, 0.2, 0.6, 0.9, ""])  # mask file missing
    annotations = tmp_path / "test-annotations-object-segmentation.csv"
    with annotations.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    classes = tmp_path / "oidv6-class-descriptions.csv"
    classes.write_text("LabelName,DisplayName\n/m/01,Teddy bear\n/m/02,Mug\n")
    return tmp_path, annotations, masks, images, classes


def test_converter_applies_the_reference_filters_and_counts_every_drop(release):
    root, annotations, masks, images, classes = release
    manifest = root / "out" / "train.jsonl"
    report = convert_open_images(annotations, masks, images, manifest, classes)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert report.kept == 1 and len(entries) == 1
    assert report.skipped == {
        "object smaller than the minimum size": 1,
        "box area share out of range": 1,
        "object aspect ratio too extreme": 1,
        "mask empty": 1,
        "image missing or unreadable": 1,
        "mask missing": 1,
    }
    assert report.total == 7
    entry = entries[0]
    assert entry["category"] == "Teddy bear"
    # Mask box (50..129, 30..109) at half size -> image pixels (100..259, 60..219), inclusive
    # extremes widened to even extents as cal_bbox_by_seg.py does.
    assert entry["box"] == [100, 60, 260, 220]
    assert entry["image"] == "../images/test/img1.jpg"
    # The manifest is training data as it stands.
    found = load_samples(manifest, need_masks=True)
    assert len(found.samples) == 1 and found.samples[0].box == (100, 60, 260, 220)


def test_looser_filters_keep_more(release):
    root, annotations, masks, images, classes = release
    report = convert_open_images(annotations, masks, images, root / "all.jsonl", classes,
                                 BoxFilters(min_area_share=0.0, max_area_share=1.0, min_side=1, min_aspect=0.0))
    assert report.kept == 4 and report.skipped == {"mask empty": 1, "image missing or unreadable": 1, "mask missing": 1}


def test_mask_box_matches_the_reference_script(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, (20, 10), (3, 2, 8, 7))  # rows 2..6, cols 3..7 inclusive: extents 4 and 4
    assert mask_box(path, (20, 10)) == (3, 2, 7, 6)
    write_mask(path, (20, 10), (3, 2, 9, 7))  # cols 3..8: extent 5 -> widened to the right
    assert mask_box(path, (20, 10)) == (3, 2, 9, 6)


def test_not_a_segmentation_csv_is_one_clear_error(release):
    root, annotations, masks, images, _ = release
    bad = root / "bad.csv"
    bad.write_text("ImageID,Confidence\nx,1\n")
    with pytest.raises(InputError, match="lacks column MaskPath"):
        convert_open_images(bad, masks, images, root / "x.jsonl")


# ---- the CLI surface ---------------------------------------------------------------------------

def test_cli_convert_reports_counts(release):
    root, annotations, masks, images, classes = release
    result = CliRunner().invoke(train_app, ["convert-openimages", "--annotations", str(annotations), "--masks", str(masks),
                                            "--images", str(images), "--classes", str(classes), "-o", str(root / "m.jsonl")])
    assert result.exit_code == 0, result.output
    assert "1 of 7 instances written" in result.output and "skipped 1: mask empty" in result.output


@pytest.mark.parametrize("args, message", [
    (["local", "-d", "{data}", "-o", "{out}", "--global-mapper", "{data}/none.safetensors", "--resolution", "60"],
     "--resolution must be a multiple of 8"),
    (["global", "-d", "{data}/missing", "-o", "{out}"], "neither a folder"),
    (["global", "-d", "{data}", "-o", "{out}", "--lr-scheduler", "wavy"], "--lr-scheduler 'wavy' is not supported"),
    (["global", "-d", "{data}", "-o", "{out}", "--validation-prompt", "a cat"], "must mention <concept>"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    args = [a.format(data=tmp_path, out=tmp_path / "out") for a in args]
    result = CliRunner().invoke(train_app, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1] and len(lines) == 1


def test_cli_help_lists_the_commands():
    result = CliRunner().invoke(train_app, ["--help"])
    assert result.exit_code == 0
    for command in ("global", "local", "convert-openimages"):
        assert command in result.output
