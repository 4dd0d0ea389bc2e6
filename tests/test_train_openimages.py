"""The Open Images V6 converter (global and local stage) on hand-made releases, and the `elite train` CLI surface."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from elite_cli.errors import InputError
from elite_cli.commands.train import train_app
from elite_cli.training.data import GLOBAL_PADDING, TrainingExamples, decode_sample, load_samples, padded_crop
from elite_cli.training.openimages import BoxFilters, convert_open_images, mask_box, stage_filters

HEADER = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax", "PredictedIoU", "Clicks"]


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_models.base_model, subfolder="tokenizer")


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


def entries_of(manifest):
    return [json.loads(line) for line in manifest.read_text().splitlines()]


# ---- local stage: segmentation CSV + masks ------------------------------------------------------

def test_local_stage_applies_the_reference_mask_filters_and_counts_every_drop(release):
    root, annotations, masks, images, classes = release
    manifest = root / "out" / "train.jsonl"
    report = convert_open_images("local", annotations, images, manifest, masks_dir=masks, classes=classes)
    entries = entries_of(manifest)
    # No area-share filter in this stage: the whole-image object (area share 1.0) is kept.
    assert report.kept == 2 and len(entries) == 2
    assert report.skipped == {
        "object smaller than the minimum size": 1,
        "object aspect ratio too extreme": 1,
        "mask empty": 1,
        "image missing or unreadable": 1,
        "mask missing": 1,
    }
    assert report.total == 7
    first, whole = entries
    assert first["category"] == "Teddy bear" and whole["category"] == "Mug"
    # Mask box (50..129, 30..109) at half size -> image pixels (100..259, 60..219), inclusive
    # extremes widened to even extents as cal_bbox_by_seg.py does.
    assert first["box"] == [100, 60, 260, 220]
    assert whole["box"] == [0, 0, 400, 300]  # rows 0..299: extent 299, widened to the bottom edge
    assert first["image"] == "../images/test/img1.jpg" and first["mask"] == "../segs/test/img1_m01_a.png"
    # The manifest is training data as it stands.
    found = load_samples(manifest, need_masks=True)
    assert [sample.box for sample in found.samples] == [(100, 60, 260, 220), (0, 0, 400, 300)]
    assert not found.skipped and not (manifest.parent / "train.jsonl.tmp").exists()


def test_local_filters_can_be_loosened_or_given_an_area_filter(release):
    root, annotations, masks, images, classes = release
    loose = convert_open_images("local", annotations, images, root / "all.jsonl", masks_dir=masks,
                                filters=stage_filters("local", min_side=0, min_aspect=0.0))
    assert loose.kept == 4 and loose.skipped == {"mask empty": 1, "image missing or unreadable": 1, "mask missing": 1}
    # An explicit area filter reads the CSV's normalised box (the whole-image row has share 1.0).
    with_area = convert_open_images("local", annotations, images, root / "area.jsonl", masks_dir=masks,
                                    filters=stage_filters("local", max_area_share=0.8))
    assert with_area.kept == 1 and with_area.skipped["box area share out of range"] == 1


def test_stage_filters_are_the_reference_ones_unless_overridden():
    assert stage_filters("global") == BoxFilters(min_area_share=0.02, max_area_share=0.8)
    assert stage_filters("local") == BoxFilters(min_side=100, min_aspect=0.5)
    assert stage_filters("global", min_area_share=0.1, min_side=None) == BoxFilters(0.1, 0.8, None, None)


# ---- global stage: box CSV (or the segmentation CSV's boxes), no masks --------------------------

BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]


def write_box_csv(path, rows):
    """test-annotations-bbox.csv rows from (image, label, xmin, xmax, ymin, ymax)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BOX_HEADER)
        for image_id, label, *box in rows:
            writer.writerow([image_id, "xclick", label, 1, *box, 0, 0, 0, 0, 0])


def reference_crop(normalised, width, height):
    """The global crop as datasets.OpenImagesDataset computes it (x0 x1 y0 y1 scaled, padded 10, int())."""
    x0, x1, y0, y1 = normalised[0] * width, normalised[1] * width, normalised[2] * height, normalised[3] * height
    return (int(x0 - min(10, x0 - 0)), int(y0 - min(10, y0 - 0)),
            int(x1 + min(10, width - x1)), int(y1 + min(10, height - y1)))


def test_global_stage_from_the_box_csv_filters_by_area_only(tmp_path, tokenizer):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(images / "img1.jpg")
    kept_boxes = [
        (0.1234, 0.5689, 0.2, 0.9),  # share 0.312; fractional pixels are floored
        (0.05, 0.2, 0.07, 0.27),  # share 0.03: 60x60 px, which the local stage would drop
        (0.1, 0.9, 0.27, 0.67),  # 320x120 px: an aspect the local stage would drop
        (-0.01, 0.5, 0.0, 0.55),  # sticks out on the left: clamped to the image
    ]
    rows = [("img1", "/m/01", *box) for box in kept_boxes] + [
        ("img1", "/m/02", 0.1, 0.2, 0.1, 0.2),  # share 0.01
        ("img1", "/m/02", 0.0, 1.0, 0.0, 0.9),  # share 0.9
        ("img1", "/m/02", 0.8, 0.2, 0.9, 0.1),  # reversed: share 0.48 but no pixels
        ("img1", "/m/02", "x", 0.5, 0.1, 0.5),
        ("img9", "/m/02", 0.1, 0.5, 0.1, 0.5),  # no such image
    ]
    annotations = tmp_path / "test-annotations-bbox.csv"
    write_box_csv(annotations, rows)
    manifest = tmp_path / "global.jsonl"
    report = convert_open_images("global", annotations, images, manifest)
    assert report.kept == 4 and report.total == 9
    assert report.skipped == {"box area share out of range": 2, "box empty in pixels": 1, "bad box numbers": 1,
                              "image missing or unreadable": 1}
    entries = entries_of(manifest)
    assert [entry["box"] for entry in entries] == [[49, 60, 227, 270], [20, 21, 80, 81], [40, 81, 360, 201],
                                                  [0, 0, 200, 165]]
    assert all(set(entry) == {"image", "category", "box"} for entry in entries)  # no "mask": whole crops
    assert entries[0]["category"] == "/m/01"  # no --classes: the label id
    # The loader's 10 px padding of these boxes is exactly the reference's crop.
    for entry, normalised in zip(entries, kept_boxes):
        assert padded_crop(tuple(entry["box"]), GLOBAL_PADDING, 400, 300) == reference_crop(normalised, 400, 300)
    found = load_samples(manifest, need_masks=False)
    assert len(found.samples) == 4 and not found.skipped
    examples = TrainingExamples(found.samples, "global", tokenizer, resolution=64, clip_size=224, latent_factor=8, seed=0)
    example = examples[(0, 0)]
    assert example["skipped"] == [] and example["pixels"].shape == (3, 64, 64)


def test_global_stage_takes_the_segmentation_csv_without_masks(release):
    root, annotations, masks, images, classes = release
    manifest = root / "global.jsonl"
    report = convert_open_images("global", annotations, images, manifest, classes=classes)
    # Only the area share filters: small, elongated, empty-mask and missing-mask rows all stay.
    assert report.kept == 5 and report.skipped == {"box area share out of range": 1, "image missing or unreadable": 1}
    entries = entries_of(manifest)
    assert entries[0] == {"image": "images/test/img1.jpg", "category": "Teddy bear", "box": [100, 60, 260, 219]}
    assert all("mask" not in entry for entry in entries)


# ---- EXIF orientation --------------------------------------------------------------------------

def write_turned_jpeg(path, displayed, orientation=6):
    """Store `displayed` as a camera would: pixels turned, EXIF orientation saying how to turn them back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    # exif_transpose undoes orientation 6 with ROTATE_270, so the stored pixels are turned by 90.
    displayed.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)


@pytest.mark.parametrize("stage", ["global", "local"])
def test_boxes_are_in_the_frame_the_loader_sees_for_exif_turned_jpegs(tmp_path, stage):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    displayed = Image.new("RGB", (400, 600), (0, 0, 255))  # upright: 400 wide, 600 high
    displayed.paste((255, 0, 0), (100, 60, 300, 260))  # the object
    write_turned_jpeg(images / "turned.jpg", displayed)
    with Image.open(images / "turned.jpg") as stored:
        assert stored.size == (600, 400)
    if stage == "global":
        annotations = tmp_path / "test-annotations-bbox.csv"
        write_box_csv(annotations, [("turned", "/m/01", 0.25, 0.75, 0.1, 260 / 600)])
    else:
        write_mask(masks / "turned_m01.png", (200, 300), (50, 30, 150, 130))  # half size, displayed frame
        annotations = tmp_path / "test-annotations-object-segmentation.csv"
        with annotations.open("w", newline="") as handle:
            csv.writer(handle).writerows([HEADER, ["turned_m01.png", "turned", "/m/01", "b", 0.25, 0.75, 0.1, 0.43, 0.9, ""]])
    manifest = tmp_path / "m.jsonl"
    report = convert_open_images(stage, annotations, images, manifest, masks_dir=masks)
    assert report.kept == 1, report.skipped
    # In the stored frame this would have been [150, 40, 450, 173]: outside the upright 400x600 picture.
    assert entries_of(manifest)[0]["box"] == [100, 60, 300, 260]
    sample = load_samples(manifest, need_masks=stage == "local").samples[0]
    image, mask, box = decode_sample(sample)
    assert image.shape == (600, 400, 3) and box == (100, 60, 300, 260)
    left, top, right, bottom = box
    object_pixels = image[top + 2 : bottom - 2, left + 2 : right - 2].reshape(-1, 3).mean(axis=0)
    assert object_pixels[0] > 200 and object_pixels[2] < 50  # the red object, not the blue background


# ---- wrong input --------------------------------------------------------------------------------

def test_mask_box_matches_the_reference_script(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, (20, 10), (3, 2, 8, 7))  # rows 2..6, cols 3..7 inclusive: extents 4 and 4
    assert mask_box(path, (20, 10)) == (3, 2, 7, 6)
    write_mask(path, (20, 10), (3, 2, 9, 7))  # cols 3..8: extent 5 -> widened to the right
    assert mask_box(path, (20, 10)) == (3, 2, 9, 6)


@pytest.mark.parametrize("stage, header, masks, message", [
    ("local", BOX_HEADER, True, "lacks column MaskPath; the local stage needs the segmentation CSV"),
    ("global", ["ImageID", "Confidence"], False, "has neither the box CSV's columns (ImageID, LabelName, XMin"),
    ("local", HEADER, False, "the local stage needs --masks"),
    ("both", HEADER, True, "--stage 'both' is not supported; use global or local"),
])
def test_wrong_input_for_the_stage_is_one_clear_error(release, stage, header, masks, message):
    root, _, masks_dir, images, _ = release
    annotations = root / "some.csv"
    annotations.write_text(",".join(header) + "\n")
    output = root / "x.jsonl"
    with pytest.raises(InputError, match=re.escape(message)):
        convert_open_images(stage, annotations, images, output, masks_dir=masks_dir if masks else None)
    assert list(root.glob("x.jsonl*")) == []  # neither a manifest nor its temporary file


def test_nothing_kept_is_an_error_with_the_reasons_and_writes_nothing(release):
    root, annotations, masks, images, classes = release
    manifest = root / "none.jsonl"
    with pytest.raises(InputError, match=r"none of the 7 instances passed the local stage's checks \(.*mask empty: 1") as error:
        convert_open_images("local", annotations, images, manifest, masks_dir=masks,
                            filters=stage_filters("local", min_side=10_000))
    assert "\n" not in str(error.value)
    assert not manifest.exists() and not (root / "none.jsonl.tmp").exists()


def test_missing_class_names_file_is_one_clear_error(release):
    root, annotations, masks, images, _ = release
    with pytest.raises(InputError, match="--classes .* is not an existing file"):
        convert_open_images("global", annotations, images, root / "x.jsonl", classes=root / "none.csv")


# ---- the CLI surface ---------------------------------------------------------------------------

def test_cli_converts_for_the_local_stage_and_reports_counts(release):
    root, annotations, masks, images, classes = release
    result = CliRunner().invoke(train_app, ["convert-openimages", "--stage", "local", "--annotations", str(annotations),
                                            "--masks", str(masks), "--images", str(images), "--classes", str(classes),
                                            "-o", str(root / "m.jsonl")])
    assert result.exit_code == 0, result.output
    assert "2 of 7 instances written" in result.stdout and "skipped 1: mask empty" in result.stdout


def test_cli_global_stage_overrides_a_filter_and_says_masks_are_unused(release):
    root, annotations, masks, images, _ = release
    result = CliRunner().invoke(train_app, ["convert-openimages", "--stage", "global", "--annotations", str(annotations),
                                            "--masks", str(masks), "--images", str(images), "--min-area", "0.05",
                                            "-o", str(root / "m.jsonl")])
    assert result.exit_code == 0, result.output
    # The 0.03 share row now falls below --min-area as well as the whole-image one above 0.8.
    assert "4 of 7 instances written" in result.stdout and "skipped 2: box area share out of range" in result.stdout
    assert "--masks is not used" in result.stderr
    assert all("mask" not in entry for entry in entries_of(root / "m.jsonl"))


@pytest.mark.parametrize("args, exit_code, message", [
    ([], 2, "Missing option '--stage'"),
    (["--stage", "local"], 1, "Error: the local stage needs --masks"),
])
def test_cli_needs_a_stage_and_the_stage_its_inputs(release, args, exit_code, message):
    root, annotations, _, images, _ = release
    result = CliRunner().invoke(train_app, ["convert-openimages", *args, "--annotations", str(annotations),
                                            "--images", str(images), "-o", str(root / "m.jsonl")])
    assert result.exit_code == exit_code and message in result.output
    assert not (root / "m.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["local", "-d", "{data}", "-o", "{out}", "--global-mapper", "{data}/none.safetensors", "--resolution", "60"],
     "--resolution must be a multiple of 8"),
    (["global", "-d", "{data}/missing", "-o", "{out}"], "missing' does not exist"),
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


@pytest.mark.parametrize("flag, value, message", [("--min-area", "2", "--min-area must be between 0 and 1 but is 2.0"),
                                                  ("--min-aspect", "-0.5", "--min-aspect must be between 0 and 1"),
                                                  ("--min-side", "-1", "--min-side must be 0 or more")])
def test_cli_refuses_filter_values_outside_their_range(tmp_path, flag, value, message):
    annotations = tmp_path / "boxes.csv"
    annotations.write_text("ImageID,LabelName,XMin,XMax,YMin,YMax\n")
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(train_app, ["convert-openimages", "--stage", "global", "--annotations", str(annotations),
                                            "--images", str(tmp_path / "images"), "-o", str(tmp_path / "m.jsonl"),
                                            flag, value])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"Error: {result.output.strip()[7:]}"]
    assert message in result.output and not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("name, message", [("manifest", "is not a .jsonl file name"), ("folder.jsonl", "is a folder")])
def test_cli_refuses_an_output_that_training_cannot_read(tmp_path, name, message):
    annotations = tmp_path / "boxes.csv"
    annotations.write_text("ImageID,LabelName,XMin,XMax,YMin,YMax\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "folder.jsonl").mkdir()
    result = CliRunner().invoke(train_app, ["convert-openimages", "--stage", "global", "--annotations", str(annotations),
                                            "--images", str(tmp_path / "images"), "-o", str(tmp_path / name)])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"Error: {result.output.strip()[7:]}"]
    assert message in result.output and "e.g. oi-global.jsonl" in result.output
    assert not (tmp_path / "manifest").exists() and not list((tmp_path / "folder.jsonl").iterdir())
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_help_shows_the_accepted_values_not_python_types(run_cli):
    trained = run_cli("train", "global", "--help").stdout
    for shown in ("--mixed-precision <no|fp16|bf16>", "--attention <auto|sdpa|xformers>", "--resume <checkpoint|latest>",
                  "--base-model <model>", "--lr-scheduler <schedule>", "--workers, --num-workers <int>"):
        assert shown in trained, shown
    assert "<str>" not in trained
    converted = run_cli("train", "convert-openimages", "--help").stdout
    assert "--stage <global|local>" in converted and "<str>" not in converted
