"""How a picture is made square (issue 13): a square picture is used whole, as the reference does
(ELITE_SPEC.md section 1), so a square picture with a mask gives the reference's concept; a
non-square picture keeps elite's square around the object; `--crop object` asks for that square
on any picture. Concepts made by the old preprocessing (which cropped square pictures too) are
stale until `elite reencode` brings them back from their stored pictures."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elite_cli.model.images import prepare_image

FAST = ("--steps", "2", "--width", "64", "--height", "64")


def square_picture_with_mask(directory: Path, size: int = 96) -> tuple[Path, Path]:
    """A textured square picture and a mask covering about a third of it, off centre."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[10 : 10 + size * 5 // 9, 30 : 30 + size * 5 // 9] = 255  # ~31% of the picture
    image_path, mask_path = directory / "square.png", directory / "square_mask.png"
    Image.fromarray(pixels).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def reference_clip_inputs(image_path: Path, mask_path: Path, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's preprocessing, written out independently: the whole picture resized (bicubic) to
    the encoder's size, the object picture = picture * mask at full size then resized, CLIP
    normalisation, the mask resized nearest-neighbour to the patch grid."""
    picture = np.asarray(Image.open(image_path).convert("RGB"))
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)

    def normalised(array: np.ndarray) -> torch.Tensor:
        resized = Image.fromarray(array).resize((size, size), Image.BICUBIC)
        return (torch.from_numpy(np.asarray(resized, np.float32) / 255.0).permute(2, 0, 1) - mean) / std

    pixels = torch.stack([normalised(picture), normalised((picture * mask[..., None]).astype(np.uint8))])
    grid_mask = torch.nn.functional.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None],
                                                size=(grid, grid), mode="nearest")[0, 0]
    return pixels, grid_mask


def test_a_square_picture_with_a_mask_is_not_cropped(tmp_path):
    image_path, mask_path = square_picture_with_mask(tmp_path)
    prepared = prepare_image(image_path, mask_path)
    assert prepared.crop == "auto"
    assert np.array_equal(np.asarray(prepared.image), np.asarray(Image.open(image_path)))
    assert np.array_equal(prepared.mask, np.asarray(Image.open(mask_path)) > 127)


def test_crop_object_squares_around_the_object_even_on_a_square_picture(tmp_path):
    image_path, mask_path = square_picture_with_mask(tmp_path)
    prepared = prepare_image(image_path, mask_path, crop="object")
    side = prepared.image.size[0]
    assert prepared.image.size == (side, side) and side < 96
    assert prepared.mask.mean() > 0.6  # the object fills the tight square


@pytest.mark.parametrize("crop", ["auto", "object"])
def test_a_non_square_picture_still_gets_its_object_square(tmp_path, crop):
    picture = np.zeros((60, 150, 3), np.uint8)
    picture[:, :, 1] = np.arange(150, dtype=np.uint8)[None, :]
    mask = np.zeros((60, 150), np.uint8)
    mask[20:40, 110:130] = 255
    Image.fromarray(picture).save(tmp_path / "wide.png")
    Image.fromarray(mask).save(tmp_path / "wide_mask.png")
    prepared = prepare_image(tmp_path / "wide.png", tmp_path / "wide_mask.png", crop=crop)
    side = prepared.image.size[0]
    assert prepared.image.size == (side, side) and side < 60
    rows, cols = np.nonzero(prepared.mask)
    assert prepared.mask.sum() == 400  # the whole object, centred
    assert abs((cols.min() + cols.max() + 1) / 2 - side / 2) <= 1 and abs((rows.min() + rows.max() + 1) / 2 - side / 2) <= 1


def test_an_unknown_crop_mode_is_one_sentence(tmp_path):
    from elite_cli.errors import InputError

    image_path, mask_path = square_picture_with_mask(tmp_path)
    with pytest.raises(InputError, match=r"^--crop 'tight' is not a crop mode; use auto .* or object "):
        prepare_image(image_path, mask_path, crop="tight")


def test_a_square_picture_encodes_to_the_reference_concept(tmp_path, loaded_models):
    from elite_cli.model.encoder import Encoder, select_features

    image_path, mask_path = square_picture_with_mask(tmp_path)
    concept = Encoder(loaded_models).encode(image_path, mask_path)
    pixels, grid_mask = reference_clip_inputs(image_path, mask_path, loaded_models.image_size, loaded_models.grid)
    with torch.no_grad():
        output = loaded_models.image_encoder(pixel_values=pixels, output_hidden_states=True)
        features = select_features(output)
        words = loaded_models.global_mapper([level[:1] for level in features])[0]
        local = loaded_models.local_mapper([level[1:] for level in features])[0] * grid_mask.reshape(-1, 1)
    assert torch.equal(concept.mask, grid_mask)
    torch.testing.assert_close(concept.words, words, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(concept.local, local, rtol=1e-5, atol=1e-6)
    assert (concept.provenance["preprocessing"], concept.provenance["crop"]) == ("2", "auto")


# --- the CLI: --crop, provenance, and concepts made by the old preprocessing -----------------------

def write_version_1_concept(home: Path, loaded_models, image_path: Path, mask_path: Path, name: str) -> None:
    """Put into the library what elite before 0.2 wrote: the object-square encoding, in a format
    version 1 file without the preprocessing keys, with its kept sources; `repair` indexes it
    as it indexes any concept file it finds."""
    from elite_cli.model.encoder import Encoder
    from elite_cli.library import ConceptStore
    from elite_cli.library import conceptfile as cf

    concept = Encoder(loaded_models).encode(image_path, mask_path, crop="object")  # the old crop
    tensors = cf.disk_tensors(concept)
    metadata = cf.concept_metadata(concept, tensors, name=name, created=cf.utc_now())
    for key in cf.VERSION_1_DEFAULTS:
        del metadata[key]
    metadata["format_version"] = "1"
    concepts = home / "concepts"
    concepts.mkdir(parents=True, exist_ok=True)
    stem = cf.hex_of(metadata["concept_id"])
    shutil.copyfile(image_path, concepts / f"{stem}.image.png")
    shutil.copyfile(mask_path, concepts / f"{stem}.mask.png")
    (concepts / f"{stem}.thumb.png").write_bytes(Path(image_path).read_bytes())
    (concepts / f"{stem}.safetensors").write_bytes(cf.serialize(tensors, metadata))
    with ConceptStore(home) as store:
        report = store.repair()
    assert report.after.ok and report.actions == [f"indexed {stem}.safetensors as '{name}'"], report.actions


def test_old_concepts_are_stale_warned_about_and_reencoded_from_their_pictures(
        run_cli, use_tiny_models, loaded_models, elite_home, tmp_path):
    image_path, mask_path = square_picture_with_mask(tmp_path)
    write_version_1_concept(elite_home, loaded_models, image_path, mask_path, "oldcat")

    listed = run_cli("list")
    assert listed.exit_code == 0 and re.search(r"oldcat .*│ yes", listed.stdout), listed.stdout
    assert "older elite that cropped square pictures" in listed.stderr
    row = json.loads(run_cli("list", "--json").stdout)[0]
    assert (row["stale"], row["preprocessing"], row["crop"]) == (True, 1, "")
    # gen still uses it (the old concept is a valid concept), and says how to update it.
    made = run_cli("gen", "<oldcat> on the beach", "-o", tmp_path / "out", *FAST)
    assert made.exit_code == 0, made.output
    assert "Warning: <oldcat> was encoded by an older elite that cropped square pictures; run `elite reencode oldcat`" \
        in made.stderr

    reencoded = run_cli("reencode", "oldcat")
    assert reencoded.exit_code == 0 and "Re-encoded <oldcat>" in reencoded.stdout, reencoded.output
    row = json.loads(run_cli("list", "--json").stdout)[0]
    assert (row["stale"], row["preprocessing"], row["crop"]) == (False, 2, "auto")
    assert "older elite" not in run_cli("list").stderr
    # The concept is now what `add` makes from the same pictures today: the reference's.
    from elite_cli.model.encoder import Encoder
    from elite_cli.library import ConceptStore

    expected = Encoder(loaded_models).encode(image_path, mask_path)
    with ConceptStore(elite_home) as store:
        stored = store.load("oldcat")
    assert torch.equal(stored.words, expected.words.half().float())
    assert torch.equal(stored.local, expected.local.half().float())
    again = run_cli("gen", "<oldcat> on the beach", "-o", tmp_path / "out2", *FAST)
    assert again.exit_code == 0 and "Warning" not in again.stderr
    assert run_cli("reencode", "oldcat").stdout == "Up to date: <oldcat>\n"


def test_an_old_concept_whose_encoding_does_not_change_is_still_brought_up_to_date(
        run_cli, use_tiny_models, loaded_models, elite_home, tmp_path):
    # Without a mask the old crop of a square picture was the whole picture: re-encoding gives the
    # very tensors stored, and must still record the new preprocessing (no stale loop).
    image_path, _ = square_picture_with_mask(tmp_path)
    full_mask = tmp_path / "full_mask.png"
    Image.new("L", Image.open(image_path).size, 255).save(full_mask)
    write_version_1_concept(elite_home, loaded_models, image_path, full_mask, "wholecat")
    before = json.loads(run_cli("list", "--json").stdout)[0]
    assert before["stale"] is True
    assert run_cli("reencode", "wholecat").exit_code == 0
    after = json.loads(run_cli("list", "--json").stdout)[0]
    assert (after["id"], after["stale"], after["preprocessing"]) == (before["id"], False, 2)
    from elite_cli.library import conceptfile as cf

    metadata = cf.read_metadata(Path(after["file_path"]))
    assert (metadata["format_version"], metadata["preprocessing"], metadata["crop"]) == ("2", "2", "auto")
    assert run_cli("check").exit_code == 0


def test_crop_choice_is_stored_and_repeated_by_reencode(run_cli, use_tiny_models, loaded_models, elite_home, tmp_path):
    image_path, mask_path = square_picture_with_mask(tmp_path)
    added = run_cli("add", image_path, "--mask", mask_path, "--crop", "object", "--name", "tight", "--json")
    assert added.exit_code == 0, added.output
    shown = json.loads(run_cli("show", "tight", "--json").stdout)
    assert (shown["crop"], shown["preprocessing"]) == ("object", 2)
    # The same pictures with the default crop are another concept, not a duplicate.
    other = run_cli("add", image_path, "--mask", mask_path, "--name", "whole")
    assert other.exit_code == 0 and "Added <whole>" in other.stdout, other.output
    ids = {row["name"]: row["id"] for row in json.loads(run_cli("list", "--json").stdout)}
    assert ids["tight"] != ids["whole"]
    assert run_cli("rm", "whole").exit_code == 0
    # reencode keeps each concept's own choice (nothing changes) unless --crop says otherwise.
    assert run_cli("reencode", "tight").stdout == "Up to date: <tight>\n"
    changed = run_cli("reencode", "tight", "--crop", "auto")
    assert changed.exit_code == 0, changed.output
    shown = json.loads(run_cli("show", "tight", "--json").stdout)
    assert shown["crop"] == "auto"
    bad = run_cli("add", image_path, "--crop", "tight")
    assert bad.exit_code != 0 and "is not a crop mode" in bad.output
