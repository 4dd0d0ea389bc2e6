"""Training data: sources, bad-sample accounting, captions, augmentations, examples, batch sharding."""

import json

import numpy as np
import pytest
from PIL import Image

from elite_cli.errors import InputError
from elite_cli.training.augment import augment_global_clip, augment_object, rescale_target
from elite_cli.training.captions import CONCEPT, TEMPLATES, caption, insert_word_slots
from elite_cli.training.data import EpochBatches, TrainingExamples, collate, load_samples


def write_pair(folder, name, size=(96, 80), box=(20, 15, 70, 60), mask=True, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{name}.png")
    if mask:
        array = np.zeros((size[1], size[0]), np.uint8)
        array[box[1] : box[3], box[0] : box[2]] = 255
        Image.fromarray(array).save(folder / f"{name}_mask.png")


@pytest.fixture
def folder(tmp_path):
    for i in range(3):
        write_pair(tmp_path, f"ok{i}", seed=i)
    write_pair(tmp_path, "nomask", mask=False)
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_models.base_model, subfolder="tokenizer")


# ---- sources -----------------------------------------------------------------------------------

def test_folder_pairs_and_missing_masks_are_counted(folder):
    local = load_samples(folder, need_masks=True)
    assert [s.image.name for s in local.samples] == ["ok0.png", "ok1.png", "ok2.png"]
    assert local.skipped == [(str(folder / "nomask.png"), "no mask file nomask_mask.png")]
    # The global stage can use a picture without a mask: the whole picture is the object.
    assert len(load_samples(folder, need_masks=False).samples) == 4


def test_manifest_resolves_relative_paths_and_counts_bad_lines(folder):
    lines = [
        {"image": "ok0.png", "mask": "ok0_mask.png", "category": "Cat", "box": [20, 15, 70, 60]},
        {"image": "ok1.png", "mask": "ok1_mask.png"},
        {"image": "missing.png", "mask": "ok1_mask.png"},
        {"mask": "ok1_mask.png"},
        {"image": "ok2.png", "mask": "ok2_mask.png", "box": [5, 5, 5, 9]},
    ]
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n", encoding="utf-8")
    found = load_samples(manifest, need_masks=True)
    assert [(s.image.name, s.category, s.box) for s in found.samples] == [("ok0.png", "Cat", (20, 15, 70, 60)), ("ok1.png", "", None)]
    reasons = [why for _, why in found.skipped]
    assert len(reasons) == 4
    assert "does not exist" in reasons[0] and '"image"' in reasons[1] and "empty" in reasons[2] and "not JSON" in reasons[3]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nothing-here", "'.*nothing-here' does not exist; give a folder"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "neither a folder"),
    (lambda p: p, "no usable training sample"),
])
def test_unusable_data_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        load_samples(make(tmp_path), need_masks=True)


def test_manifest_line_that_is_not_utf8_is_skipped_not_fatal(folder):
    manifest = folder / "mixed.jsonl"
    good = json.dumps({"image": "ok0.png", "mask": "ok0_mask.png"}).encode()
    manifest.write_bytes(b"\xef\xbb\xbf" + good + b"\n\xff\xfe{}\n" + good + b"\n")  # BOM, then a Latin-1 line
    found = load_samples(manifest, need_masks=True)
    assert len(found.samples) == 2
    assert found.skipped == [(f"{manifest}:2", "not UTF-8 text")]


# ---- captions ----------------------------------------------------------------------------------

def test_captions_follow_the_reference_templates():
    assert len(TEMPLATES) == 27 and TEMPLATES[0] == "a photo of a {}"
    assert caption("a photo of a {}") == f"a photo of a {CONCEPT}"
    assert caption("a photo of a {}", "a far away") == f"a far away photo of a {CONCEPT}"
    # The reference garbles this one ("zoomed inhe photo ..."); we replace the first word.
    assert caption("the photo of a {}", "zoomed in") == f"zoomed in photo of a {CONCEPT}"
    assert caption("the photo of a {}") == f"the photo of a {CONCEPT}"


def test_five_word_slots_shift_the_rest_and_keep_the_window():
    ids = [49406, 1, 2, 3, 99, 4, 49407] + [0] * 3
    assert insert_word_slots(ids, 4, 4, 99) == [49406, 1, 2, 3, 99, 99, 99, 99, 99, 4]
    assert len(insert_word_slots(ids, 1, 4, 7)) == len(ids)


# ---- augmentations -----------------------------------------------------------------------------

def test_augmentations_are_deterministic_per_seed_and_keep_shapes():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    outs = [augment_global_clip(crop, 224, np.random.default_rng(seed)) for seed in (1, 1, 2)]
    assert outs[0].shape == (224, 224, 3) and outs[0].dtype == np.uint8
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])

    image = np.zeros((224, 224, 3), np.uint8)
    image[60:160, 60:160] = 200
    mask = np.zeros((224, 224), np.uint8)
    mask[60:160, 60:160] = 255
    for seed in range(6):
        moved, moved_mask = augment_object(image, mask, np.random.default_rng(seed))
        assert moved.shape == (224, 224, 3) and moved_mask.shape == (224, 224)
        assert set(np.unique(moved_mask)) <= {0, 255}  # nearest: the mask stays binary
        # Image and mask move together: bright pixels lie (almost) only under the mask.
        outside = moved[moved_mask == 0].max(axis=-1)
        assert (outside > 150).mean() < 0.02


def test_rescaled_target_marks_where_the_picture_is():
    crop = np.full((50, 60, 3), 255, np.uint8)
    openings = set()
    for seed in range(30):
        target, valid, opening = rescale_target(crop, 128, 8, np.random.default_rng(seed))
        openings.add(opening)
        assert target.shape == (128, 128, 3) and valid.shape == (16, 16)
        assert -1.0 <= target.min() and target.max() <= 1.0
        if opening in ("a far away", "very small"):
            # Pasted on black: valid latent pixels hold picture, the border is black.
            upsampled = np.kron(valid, np.ones((8, 8))) > 0
            assert (target[upsampled] > 0.9).all() and target[0 if not upsampled[0, 0] else -1, 0].max() <= 1.0
            assert 0 < valid.sum() < 256
        else:
            assert valid.all()
    assert {"a", "zoomed in", "close up", "a far away", "very small"} & openings >= {"a"} and len(openings) >= 3


# ---- examples ----------------------------------------------------------------------------------

def test_global_example_has_five_word_slots(folder, tokenizer):
    found = load_samples(folder, need_masks=True)
    examples = TrainingExamples(found.samples, "global", tokenizer, resolution=64, clip_size=224, latent_factor=8, seed=0)
    example = examples[(0, 1)]
    assert example["pixels"].shape == (3, 64, 64) and example["clip_pixels"].shape == (3, 224, 224)
    position = int(example["position"])
    ids = example["input_ids"].tolist()
    placeholder = examples.prompts.placeholder_id
    assert len(ids) == 77 and ids[position : position + 5] == [placeholder] * 5
    assert examples[(0, 1)]["clip_pixels"].equal(example["clip_pixels"])  # same key, same augmentation
    assert example["skipped"] == []


def test_local_example_and_a_broken_picture_is_replaced_and_reported(folder, tokenizer):
    (folder / "ok1.png").write_bytes(b"not a png")
    found = load_samples(folder, need_masks=True)
    examples = TrainingExamples(found.samples, "local", tokenizer, resolution=64, clip_size=224, latent_factor=8, seed=0)
    example = examples[(0, 1)]
    assert len(example["skipped"]) == 1 and "ok1.png" in example["skipped"][0]
    assert example["object_pixels"].shape == (3, 224, 224) and example["object_mask"].shape == (1, 224, 224)
    assert example["valid"].shape == (1, 8, 8) and example["valid"].sum() > 0
    assert set(example["object_mask"].unique().tolist()) <= {0.0, 1.0}
    batch = collate([example, examples[(0, 0)]])
    assert batch["pixels"].shape == (2, 3, 64, 64) and len(batch["skipped"]) == 1


def test_data_where_no_picture_decodes_says_so_once_per_sample(tmp_path, tokenizer):
    from elite_cli.training.data import Sample

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(b"junk")
    samples = [Sample(tmp_path / f"{name}.jpg") for name in ("a", "b", "c")]
    examples = TrainingExamples(samples, "global", tokenizer, resolution=64, clip_size=224, latent_factor=8, seed=0)
    with pytest.raises(InputError, match=r"^all 3 training samples could not be read \(last: .*a.jpg"):
        examples[(0, 1)]


def test_mask_of_another_shape_is_skipped_but_a_scaled_one_is_used(tmp_path):
    from elite_cli.training.data import BadSample, Sample, decode_sample

    Image.fromarray(np.full((80, 96, 3), 128, np.uint8)).save(tmp_path / "p.png")
    for name, size in (("half", (48, 40)), ("rounded", (49, 40)), ("square", (40, 40))):
        Image.fromarray(np.full((size[1], size[0]), 255, np.uint8)).save(tmp_path / f"{name}.png")
    for name in ("half", "rounded"):
        assert decode_sample(Sample(tmp_path / "p.png", tmp_path / f"{name}.png"))[1].shape == (80, 96)
    with pytest.raises(BadSample, match="is 40x40, not the shape of the 96x80 picture"):
        decode_sample(Sample(tmp_path / "p.png", tmp_path / "square.png"))


# ---- batches -----------------------------------------------------------------------------------

def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_processes_share_each_global_batch_and_resume_mid_stream():
    one = take(iter(EpochBatches(10, 2, 1, 0, seed=3)), 8)
    # Two processes of batch 1 see exactly the single process's batches of 2, split.
    first = take(iter(EpochBatches(10, 1, 2, 0, seed=3)), 8)
    second = take(iter(EpochBatches(10, 1, 2, 1, seed=3)), 8)
    assert [a + b for a, b in zip(first, second)] == one
    # Epochs are permutations; the last incomplete batch is dropped (10 // 4 = 2 per epoch).
    epoch0 = [index for batch in take(iter(EpochBatches(10, 4, 1, 0, seed=3)), 2) for _, index in batch]
    assert len(set(epoch0)) == 8
    assert take(iter(EpochBatches(10, 2, 1, 0, seed=3, start=5)), 3) == one[5:8]
    with pytest.raises(InputError, match="needs 4"):
        EpochBatches(3, 2, 2, 0, seed=0)
