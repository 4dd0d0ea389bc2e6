"""Automatic object masks (issue 15): the tiny random CLIPSeg, the mask choice of `elite add`,
the mask's provenance and preview in the library, and `reencode` keeping the mask.

The tiny segmenter is random but deterministic: about 60% of any picture passes the threshold,
and its probabilities saturate at 0 and 1, so a threshold of 1.0 finds no object.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_object_picture


@pytest.fixture(scope="module")
def segmenter(tiny_models):
    from elite_cli.model.segment import load_segmenter

    return load_segmenter(str(tiny_models.segmenter), "cpu")


def wide_picture(path: Path) -> Path:
    """96x64: not square, so the concept's square is cut around the object."""
    from PIL import ImageDraw

    image = Image.new("RGB", (96, 64), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((8, 16, 40, 48), fill=(200, 40, 40))
    image.save(path)
    return path


def test_auto_mask_has_the_pictures_shape_and_follows_the_threshold(segmenter, tmp_path):
    from elite_cli.model.segment import AUTO_MASK_THRESHOLD, auto_mask, object_probabilities

    picture = Image.open(wide_picture(tmp_path / "wide.png"))
    probabilities = object_probabilities(segmenter, picture, "a cat")
    assert probabilities.shape == (64, 96) and probabilities.dtype == np.float32
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    mask = auto_mask(segmenter, picture, "a cat")
    assert mask.shape == (64, 96) and mask.dtype == bool
    assert np.array_equal(mask, probabilities > AUTO_MASK_THRESHOLD)
    assert 0.02 < mask.mean() < 0.8  # the tiny model's ~60%: neither empty nor whole
    stricter = auto_mask(segmenter, picture, "a cat", threshold=0.9)
    assert not (stricter & ~mask).any()  # a higher threshold only drops pixels
    assert not auto_mask(segmenter, picture, "a cat", threshold=1.0).any()


def test_auto_mask_is_deterministic_across_loads(tiny_models, segmenter, tmp_path):
    from elite_cli.model.segment import auto_mask, forget_segmenters, load_segmenter

    picture = Image.open(draw_object_picture(tmp_path / "cat.png"))
    first = auto_mask(segmenter, picture)
    assert np.array_equal(first, auto_mask(segmenter, picture))
    forget_segmenters()
    reloaded = load_segmenter(str(tiny_models.segmenter), "cpu")
    assert reloaded is not segmenter
    assert np.array_equal(first, auto_mask(reloaded, picture))


def test_the_segmenter_setting_must_name_a_clipseg_model(tiny_models):
    from elite_cli.errors import ModelError
    from elite_cli.model.segment import load_segmenter

    # Said from the folder's config, before any weights load (tests/test_model_folders.py has every kind).
    with pytest.raises(ModelError, match=r"holds a 'clip_vision_model' model \(its model_type\) in config.json; it "
                                         r"accepts a CLIPSeg model"):
        load_segmenter(str(tiny_models.image_encoder), "cpu")  # a CLIP vision folder, not CLIPSeg


def test_chooser_takes_file_alpha_auto_and_none(tiny_models, tmp_path):
    from elite_cli.model.masks import MaskChooser

    picture = draw_object_picture(tmp_path / "cat.png")
    cutout = tmp_path / "cutout.png"
    rgba = Image.open(picture).convert("RGBA")
    alpha = np.zeros((64, 64), dtype=np.uint8)
    alpha[16:48, 16:48] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(cutout)
    segmenter = str(tiny_models.segmenter)

    chooser = MaskChooser(None, None, segmenter, "cpu")  # its automatic masks live as long as it does
    automatic = chooser.choose(picture)
    assert (automatic.source, automatic.model, automatic.object_text) == ("auto", segmenter, "the main object")
    stored = np.asarray(Image.open(automatic.path)) > 127
    assert stored.shape == (64, 64) and automatic.coverage == pytest.approx(stored.mean())
    assert automatic.warning is None

    transparent = MaskChooser(None, None, segmenter, "cpu").choose(cutout)
    assert (transparent.source, transparent.path, transparent.coverage) == ("alpha", None, 0.25)
    # An alpha channel with every pixel opaque marks no object: it is found as in an RGB picture.
    opaque = tmp_path / "opaque.png"
    Image.open(picture).convert("RGBA").save(opaque)
    assert MaskChooser(None, None, segmenter, "cpu").choose(opaque).source == "auto"
    named = MaskChooser(None, "a cat", segmenter, "cpu").choose(cutout)  # naming the object asks for it
    assert (named.source, named.object_text) == ("auto", "a cat")

    whole = MaskChooser("none", None, segmenter, "cpu").choose(picture)
    assert (whole.source, whole.path, whole.mask_sha256, whole.coverage) == ("none", None, "", 1.0)
    given = MaskChooser(automatic.path, None, segmenter, "cpu").choose(picture)
    assert (given.source, given.mask_sha256) == ("file", automatic.mask_sha256)


def test_chooser_refuses_an_empty_automatic_mask(tiny_models, tmp_path, monkeypatch):
    from elite_cli.model import segment
    from elite_cli.errors import InputError
    from elite_cli.model.masks import MaskChooser

    monkeypatch.setattr(segment, "AUTO_MASK_THRESHOLD", 1.0)  # no pixel of the tiny model passes it
    with pytest.raises(InputError, match="^no object found: pass --mask FILE, --object TEXT or --mask none"):
        MaskChooser(None, None, str(tiny_models.segmenter), "cpu").choose(draw_object_picture(tmp_path / "cat.png"))


@pytest.mark.parametrize("coverage, warned", [(0.01, "covers 1.0% of"), (0.02, None), (0.5, None), (0.8, None),
                                              (0.9, "covers 90% of")])
def test_coverage_outside_what_the_mappers_learned_is_warned_with_the_fix(coverage, warned):
    from elite_cli.model.masks import coverage_warning

    for source in ("file", "alpha", "auto"):
        warning = coverage_warning(coverage, "cat.png", source)
        if warned is None:
            assert warning is None
            continue
        assert warned in warning and "outside the 2%-80% ELITE's mappers were trained on" in warning
        assert ("--object TEXT" in warning) == (source == "auto")
        assert ("crop the picture closer" in warning) == (coverage < 0.02)
    assert coverage_warning(coverage, "cat.png", "none") is None


def test_object_goes_with_the_automatic_mask_only(run_cli, use_tiny_models, cat_picture):
    for args in (["--mask", "none"], ["--mask", str(cat_picture)]):
        result = run_cli("add", cat_picture, *args, "--object", "a cat")
        assert result.exit_code == 1
        assert result.stderr == ("Error: --object names the object for the automatic mask; leave out --mask FILE or "
                                 "--mask none to use it.\n")


# --- through the CLI and the library --------------------------------------------------------------

def test_add_finds_the_object_stores_its_mask_and_a_preview(run_cli, use_tiny_models, loaded_models, cat_picture,
                                                            elite_home):
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.masks import MaskChooser

    result = run_cli("add", cat_picture, "--object", "a cat", "--json")
    assert result.exit_code == 0, result.output
    (added,) = json.loads(result.stdout)["added"]
    assert added["mask_source"] == "auto" and Path(added["preview_path"]).is_file()
    shown = json.loads(run_cli("show", "mycat", "--json").stdout)
    assert (shown["mask_source"], shown["mask_model"], shown["mask_object"]) == \
        ("auto", str(use_tiny_models.segmenter), "a cat")
    assert shown["preview_path"] == added["preview_path"]
    assert Path(shown["preview_path"]).parent == Path(shown["thumbnail_path"]).parent
    # The stored mask is the automatic mask, byte for byte, and the concept was encoded with it.
    chooser = MaskChooser(None, "a cat", str(use_tiny_models.segmenter), "cpu")
    expected = chooser.choose(cat_picture)
    assert Path(shown["mask_path"]).read_bytes() == expected.path.read_bytes()
    assert shown["mask_sha256"] == expected.mask_sha256
    from elite_cli.library import ConceptStore

    concept = ConceptStore(elite_home).load("mycat")
    direct = Encoder(loaded_models).encode(cat_picture, mask=expected.path)
    assert torch.equal(concept.mask, direct.mask.half().float())
    assert concept.mask.sum() < concept.mask.numel()  # not the whole picture
    preview = Image.open(shown["preview_path"])
    assert preview.mode == "RGB" and preview.size == (64, 64)

    text = run_cli("show", "mycat").stdout
    assert f"mask_source     automatic ({use_tiny_models.segmenter}, object 'a cat')" in text
    assert f"preview_path    {shown['preview_path']}" in text
    checked = run_cli("check")
    assert checked.exit_code == 0 and "Library OK (1 concept)" in checked.stdout
    removed = run_cli("rm", "mycat")
    assert removed.exit_code == 0 and not Path(shown["preview_path"]).exists()


def test_mask_none_is_the_whole_picture_as_before(run_cli, use_tiny_models, loaded_models, cat_picture, elite_home):
    from elite_cli.model.encoder import Encoder
    from elite_cli.library import ConceptStore

    result = run_cli("add", cat_picture, "--mask", "none")
    assert result.exit_code == 0, result.output
    # No preview, no warning: stderr holds only the command's time line.
    assert len(result.stdout.splitlines()) == 1 and result.stderr.startswith("Models loaded in ")
    assert len(result.stderr.splitlines()) == 1
    shown = json.loads(run_cli("show", "mycat", "--json").stdout)
    assert (shown["mask_source"], shown["mask_sha256"], shown["mask_path"], shown["preview_path"]) == \
        ("none", "", None, None)
    assert "mask_source     none (the whole picture)" in run_cli("show", "mycat").stdout
    concept = ConceptStore(elite_home).load("mycat")
    before = Encoder(loaded_models).encode(cat_picture)  # what `elite add` stored before automatic masks
    assert concept.mask.all()
    assert torch.equal(concept.words, before.words.half().float())
    assert torch.equal(concept.local, before.local.half().float())


def test_empty_automatic_mask_is_refused_in_one_line_and_nothing_stored(run_cli, use_tiny_models, cat_picture,
                                                                          elite_home, monkeypatch):
    from elite_cli.model import segment

    monkeypatch.setattr(segment, "AUTO_MASK_THRESHOLD", 1.0)
    result = run_cli("add", cat_picture)
    assert result.exit_code == 1
    assert result.stderr == f"Error: no object found: pass --mask FILE, --object TEXT or --mask none (in '{cat_picture}').\n"
    assert not (elite_home / "concepts").exists() or not any((elite_home / "concepts").iterdir())


def test_a_wide_picture_is_squared_around_the_automatic_masks_object(run_cli, use_tiny_models, loaded_models,
                                                                     tmp_path, elite_home):
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.images import prepare_image, square_box
    from elite_cli.library import ConceptStore

    picture = wide_picture(tmp_path / "wide.png")
    assert run_cli("add", picture).exit_code == 0
    record = ConceptStore(elite_home).get("wide")
    mask = np.asarray(Image.open(record.mask_path)) > 127
    box = square_box(mask, 96, 64)
    prepared = prepare_image(picture, record.mask_path)
    assert prepared.image.size == (box[2] - box[0],) * 2
    assert np.array_equal(prepared.mask, mask[box[1]:box[3], box[0]:box[2]])
    concept = ConceptStore(elite_home).load("wide")
    assert torch.equal(concept.words, Encoder(loaded_models).encode(picture, mask=record.mask_path).words.half().float())


def test_reencode_keeps_the_automatic_mask(run_cli, use_tiny_models, cat_picture, elite_home, tmp_path,
                                           monkeypatch):
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.loading import load_models
    from elite_cli.library import ConceptStore

    assert run_cli("add", cat_picture, "--object", "a cat").exit_code == 0
    before = json.loads(run_cli("show", "mycat", "--json").stdout)
    mask_bytes = Path(before["mask_path"]).read_bytes()
    # Other local mapper weights make the concept stale, so reencode makes it again in full.
    state = torch.load(use_tiny_models.local_mapper, weights_only=True)
    state = {key: value + 0.5 if key.startswith("mapping") else value for key, value in state.items()}
    torch.save(state, tmp_path / "other_local.pt")
    monkeypatch.setenv("ELITE_LOCAL_MAPPER", str(tmp_path / "other_local.pt"))
    result = run_cli("reencode", "mycat")
    assert result.exit_code == 0 and result.stdout.startswith("Re-encoded <mycat>"), result.output
    after = json.loads(run_cli("show", "mycat", "--json").stdout)
    assert after["id"] != before["id"] and after["local_mapper"] != before["local_mapper"]
    assert Path(after["mask_path"]).read_bytes() == mask_bytes and after["mask_sha256"] == before["mask_sha256"]
    assert (after["mask_source"], after["mask_model"], after["mask_object"]) == \
        ("auto", str(use_tiny_models.segmenter), "a cat")
    assert after["preview_path"] and Path(after["preview_path"]).is_file()
    assert not Path(before["preview_path"]).exists()  # went with the concept it showed
    concept = ConceptStore(elite_home).load("mycat")
    from elite_cli.commands import model_spec

    direct = Encoder(load_models(model_spec())).encode(cat_picture, mask=after["mask_path"])
    assert torch.equal(concept.local, direct.local.half().float())


def test_a_user_mask_outside_the_trained_range_is_added_with_a_warning(run_cli, use_tiny_models, cat_picture,
                                                                       tmp_path):
    dot = np.zeros((64, 64), dtype=np.uint8)
    dot[30:34, 30:34] = 255  # 16 of 4096 pixels
    Image.fromarray(dot).save(tmp_path / "dot.png")
    result = run_cli("add", cat_picture, "--mask", tmp_path / "dot.png")
    assert result.exit_code == 0, result.output
    warning, time_line = result.stderr.splitlines()
    assert warning == (f"Warning: the object covers 0.4% of '{cat_picture}', outside the 2%-80% ELITE's mappers "
                       "were trained on; crop the picture closer to the object.")
    assert time_line.startswith("Models loaded in ")
    shown = json.loads(run_cli("show", "mycat", "--json").stdout)
    assert shown["mask_source"] == "file" and Path(shown["preview_path"]).is_file()


def test_concept_files_without_mask_keys_tell_from_their_sources(tmp_path):
    from elite_cli.errors import FormatError
    from elite_cli.library import conceptfile as cf
    from elite_cli.model.masks import describe_mask_source
    from elite_cli.library import ConceptStore
    from library_support import random_concept

    store = ConceptStore(tmp_path / "home")
    picture = draw_object_picture(tmp_path / "cat.png")
    record = store.add(random_concept(1), image_path=picture, name="old")
    metadata = cf.read_metadata(record.file_path)
    assert not set(cf.MASK_KEYS) & set(metadata)  # nothing recorded: no key written
    # Not recorded: the stored sources tell (no mask file, an opaque picture: the whole picture).
    assert store.mask_origin(record) == {"mask_source": "none", "mask_model": "", "mask_object": ""}
    assert describe_mask_source(store.mask_origin(record)) == "none (the whole picture)"
    assert not record.preview_path.exists()
    record.image_path.unlink()  # nothing left to tell
    assert describe_mask_source(store.mask_origin(record)) == "not recorded"
    data = record.file_path.read_bytes()
    stored = cf.load_bytes(data, "old")
    bad = cf.serialize({name: stored.tensors[name] for name in cf.CONCEPT_TENSORS},
                       {**stored.metadata, "mask_source": "guessed"})
    with pytest.raises(FormatError, match="has mask_source 'guessed'; accepted are file, painted, alpha, auto, none"):
        cf.load_bytes(bad, "bad")


def test_repair_quarantines_a_preview_whose_concept_is_gone(tmp_path):
    from elite_cli.library import ConceptStore

    store = ConceptStore(tmp_path / "home")
    orphan = store.concepts_dir / ("ab" * 32 + ".preview.png")
    orphan.write_bytes(b"png")
    found = store.check()
    assert [(problem.kind, problem.subject) for problem in found.problems] == [("orphan-companion", orphan.name)]
    repaired = store.repair()
    # Like the thumbnail, it goes to quarantine with the lost concept's picture: repair deletes nothing of a concept.
    assert repaired.after.ok and not orphan.exists()
    assert (repaired.quarantine / orphan.name).read_bytes() == b"png"
