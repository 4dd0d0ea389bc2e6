"""The whole user journey through the CLI on the tiny models: add -> list -> show -> gen ->
history -> gen --again -> export -> rm -> import, and every user error as one line."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from conftest import draw_object_picture, pixels
from elite_cli.common.outputs import read_png_parameters

FAST = ("--steps", "2", "--width", "64", "--height", "64")
NAME_PATTERN = re.compile(r"^\d{8}-\d{6}-(?P<slug>[a-z0-9-]+)-(?P<seed>\d+)(-\d+)?\.png$")


def listed_names(run_cli) -> list[str]:
    result = run_cli("list", "--json")
    assert result.exit_code == 0, result.output
    return sorted(row["name"] for row in json.loads(result.stdout))


def elite_chunk(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.info["elite"]


def rewrite_elite_chunk(path: Path, text: str) -> None:
    """The same pixels and A1111 text, another `elite` chunk (as an older elite wrote it)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(path) as image:
        image.load()
        info = PngInfo()
        info.add_text("parameters", image.info["parameters"])
        info.add_text("elite", text)
        image.save(path, format="PNG", pnginfo=info)


@pytest.fixture(scope="module")
def cat_library_template(tmp_path_factory, tiny_models) -> tuple[Path, Path]:
    """A library holding <mycat> (tag pets), made once per module through the CLI itself."""
    from typer.testing import CliRunner

    from elite_cli.commands import app

    home = tmp_path_factory.mktemp("cat-library") / "home"
    picture = draw_object_picture(home.parent / "mycat.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELITE_HOME", str(home))
        for variable, value in (
            ("ELITE_BASE_MODEL", tiny_models.base_model),
            ("ELITE_IMAGE_ENCODER", tiny_models.image_encoder),
            ("ELITE_GLOBAL_MAPPER", tiny_models.global_mapper),
            ("ELITE_LOCAL_MAPPER", tiny_models.local_mapper),
            ("ELITE_SEGMENTER", tiny_models.segmenter),
            ("ELITE_DEVICE", "cpu"),
        ):
            patch.setenv(variable, str(value))
        result = CliRunner().invoke(app, ["add", str(picture), "--tag", "pets"])
    assert result.exit_code == 0, result.output
    return home, picture


@pytest.fixture
def library_with_cat(use_tiny_models, elite_home: Path, cat_library_template) -> Path:
    """This test's library: a copy of the template (copying is much faster than encoding)."""
    template, picture = cat_library_template
    shutil.copytree(template, elite_home)
    return picture


def test_add_list_show(run_cli, use_tiny_models, loaded_models, cat_picture, dog_picture):
    result = run_cli("add", cat_picture, dog_picture, "--tag", "pets", "--json")
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    assert [item["name"] for item in added["added"]] == ["mycat", "mydog"]
    assert all(item["seconds"] >= 0 for item in added["added"])
    assert added["total_seconds"] >= added["model_load_seconds"] >= 0
    assert listed_names(run_cli) == ["mycat", "mydog"]

    other = draw_object_picture(cat_picture.with_name("other.png"), color=(20, 160, 20))
    plain = run_cli("add", other, "--name", "tom")
    assert plain.exit_code == 0
    # Without a mask the object is found automatically, and the preview of it is named.
    added_line, preview_line = plain.stdout.splitlines()
    assert re.match(r"^Added <tom> \(id [0-9a-f]{12}\) in \d+\.\d\ds$", added_line)
    # The whole command's time as well as the encoding's (the models were loaded in this process).
    assert re.search(r"^Models loaded in \d+\.\d s, ready \d+\.\d s after the command started; "
                     r"\d+\.\d s in all since the command started\.$", plain.stderr, re.M), plain.stderr
    assert re.fullmatch(r"  preview: .+\.preview\.png", preview_line)
    assert Path(preview_line.split(": ", 1)[1]).is_file()
    assert listed_names(run_cli) == ["mycat", "mydog", "tom"]
    # The same picture again is recognised, not stored twice.
    same = run_cli("add", cat_picture, "--name", "again")
    assert same.exit_code == 0
    assert same.stdout.startswith("Already in the library as <mycat>")
    assert "run `elite rename mycat again` to use <again>" in same.stdout
    assert listed_names(run_cli) == ["mycat", "mydog", "tom"]

    shown = run_cli("show", "mycat", "--json")
    assert shown.exit_code == 0
    details = json.loads(shown.stdout)
    assert details["name"] == "mycat"
    text = json.dumps(details)
    models = loaded_models  # the same cached models the CLI loaded
    assert models.global_fingerprint in text and models.local_fingerprint in text
    assert "thumbnail" in text
    human = run_cli("show", "mycat")
    assert "mycat" in human.stdout and models.global_fingerprint in human.stdout


def test_gen_writes_reproducible_pngs_and_history(run_cli, library_with_cat, tmp_path: Path):
    out = tmp_path / "out"
    result = run_cli("gen", "<mycat> on the beach", "-n", "2", "--seed", "5", "-o", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert [item["seed"] for item in written] == [5, 6]
    paths = [Path(item["path"]) for item in written]
    assert sorted(out.iterdir()) == sorted(paths)  # nothing else, no temporary files
    for index, path in enumerate(paths):
        match = NAME_PATTERN.match(path.name)
        assert match and match["slug"] == "mycat-on-the-beach" and match["seed"] == str(5 + index)
        parameters = read_png_parameters(path)
        assert parameters["seed"] == 5 + index and parameters["index"] == index
        assert (parameters["steps"], parameters["width"], parameters["llambda"]) == (2, 64, 0.8)
        assert list(parameters["concepts"]) == ["mycat"]
        chunk = json.loads(elite_chunk(path))  # the user's word, not the code's `llambda`
        assert chunk["lambda"] == 0.8 and "llambda" not in chunk
    assert pixels(paths[0]) != pixels(paths[1])  # different seeds, different images

    runs = json.loads(run_cli("history", "--json").stdout)
    assert len(runs) == 1
    run_id = str(written[0]["run_id"])
    assert runs[0]["run_id"] == run_id and runs[0]["seed"] == 5
    assert runs[0]["images"][0]["parameters"]["lambda"] == 0.8 and "llambda" not in runs[0]["images"][0]["parameters"]
    assert [image["output_path"] for image in runs[0]["images"]] == [str(path.resolve()) for path in paths]
    assert "<mycat> on the beach" in run_cli("history").stdout

    again = run_cli("gen", "--again", run_id, "-o", out, "--json")
    assert again.exit_code == 0, again.output
    repeated = [Path(item["path"]) for item in json.loads(again.stdout)]
    assert len(repeated) == 2 and not set(repeated) & set(paths)
    assert [pixels(path) for path in repeated] == [pixels(path) for path in paths]
    assert len(json.loads(run_cli("history", "--json").stdout)) == 2

    # A PNG written before the chunk said `lambda` (it said `llambda`) is repeated all the same.
    rewrite_elite_chunk(paths[1], elite_chunk(paths[1]).replace('"lambda"', '"llambda"'))
    from_png = run_cli("gen", "--again", paths[1], "-o", out, "--json")
    assert from_png.exit_code == 0, from_png.output
    (single,) = json.loads(from_png.stdout)
    assert single["seed"] == 6
    # Alone instead of in a batch of two: the same image up to float rounding in batched
    # matrix products (a pixel may differ by a level or two).
    alone, batched = pixels(Path(single["path"])), pixels(paths[1])
    assert max(abs(a - b) for a, b in zip(alone, batched)) <= 3


def test_again_uses_the_concepts_the_run_used_after_a_rename(run_cli, library_with_cat, tmp_path: Path):
    out = tmp_path / "out"
    first = run_cli("gen", "<mycat> on the beach", "--seed", "3", "-o", out, "--json", *FAST)
    assert first.exit_code == 0, first.output
    (original,) = json.loads(first.stdout)
    cat_id = read_png_parameters(Path(original["path"]))["concepts"]["mycat"]
    # The name moves to another concept: --again must still use the cat it was made with.
    assert run_cli("rename", "mycat", "tom").exit_code == 0
    dog = draw_object_picture(tmp_path / "dog.png", color=(40, 40, 200))
    assert run_cli("add", dog, "--name", "mycat").exit_code == 0
    for again in (original["run_id"][:8], original["path"]):
        repeated = run_cli("gen", "--again", again, "-o", out, "--json")
        assert repeated.exit_code == 0, repeated.output
        (image,) = json.loads(repeated.stdout)
        assert read_png_parameters(Path(image["path"]))["concepts"] == {"mycat": cat_id}
        assert pixels(Path(image["path"])) == pixels(Path(original["path"]))

    assert run_cli("rm", "tom").exit_code == 0
    files = sorted(out.iterdir())
    gone = run_cli("gen", "--again", original["run_id"][:8], "-o", out)
    assert gone.exit_code == 1
    assert gone.stderr.startswith(f"Error: concept <mycat> that {original['run_id'][:8]} used (id {cat_id[:19]}) is no longer in the library")
    assert gone.stderr.count("\n") == 1
    assert sorted(out.iterdir()) == files


def test_gen_prompts_file_and_random_seed(run_cli, library_with_cat, tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\n<mycat> in the snow\n\na painting of <mycat>\n")
    out = tmp_path / "out"
    result = run_cli("gen", "--prompts", prompts, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(Path(line).parent == out for line in lines)
    assert re.search(r"^Seed: \d+", result.stderr, re.MULTILINE)
    slugs = sorted(NAME_PATTERN.match(Path(line).name)["slug"] for line in lines)
    assert slugs == ["a-painting-of-mycat", "mycat-in-the-snow"]


def test_export_rm_import_round_trip(run_cli, library_with_cat, tmp_path: Path):
    exported = tmp_path / "mycat.elite.safetensors"
    assert run_cli("export", "mycat", "-o", exported).exit_code == 0
    assert exported.is_file()
    before = json.loads(run_cli("show", "mycat", "--json").stdout)

    assert run_cli("rm", "mycat").exit_code == 0
    assert listed_names(run_cli) == []

    imported = run_cli("import", exported, "--json")
    assert imported.exit_code == 0, imported.output
    assert listed_names(run_cli) == ["mycat"]
    after = json.loads(run_cli("show", "mycat", "--json").stdout)
    assert after["id"] == before["id"] and after["global_mapper"] == before["global_mapper"]

    # The library already holds it: importing under another name finds the same concept.
    again = run_cli("import", exported, "--name", "tom")
    assert again.exit_code == 0
    assert again.stdout.startswith("Already in the library as <mycat>")
    out = tmp_path / "out"
    assert run_cli("gen", "<mycat> in the snow", "--seed", "1", "-o", out, *FAST).exit_code == 0
    assert len(list(out.iterdir())) == 1


def test_rename_and_tag(run_cli, library_with_cat):
    assert run_cli("rename", "mycat", "tom").exit_code == 0
    assert listed_names(run_cli) == ["tom"]
    assert run_cli("tag", "tom", "black", "small").exit_code == 0
    tagged = json.loads(run_cli("list", "--tag", "black", "--json").stdout)
    assert [row["name"] for row in tagged] == ["tom"]
    assert run_cli("tag", "tom", "black", "--remove").exit_code == 0
    assert json.loads(run_cli("list", "--tag", "black", "--json").stdout) == []
    assert [row["name"] for row in json.loads(run_cli("list", "--tag", "pets", "--json").stdout)] == ["tom"]


def test_rename_names_the_concept_and_says_when_nothing_changes(run_cli, library_with_cat):
    concept_id = json.loads(run_cli("list", "--json").stdout)[0]["id"]
    same = run_cli("rename", "mycat", "mycat")
    assert same.exit_code == 0 and same.stdout == "<mycat> already has that name; nothing changed\n"
    by_id = run_cli("rename", concept_id.removeprefix("sha256:")[:8], "tom")
    assert by_id.exit_code == 0 and by_id.stdout == "Renamed <mycat> to <tom>\n"


def test_tag_says_when_nothing_changes(run_cli, library_with_cat):
    missing = run_cli("tag", "mycat", "nope", "--remove")
    assert missing.exit_code == 0
    assert missing.stderr == "Note: <mycat> does not have the tag 'nope'; nothing to remove for it.\n"
    assert missing.stdout == "<mycat> tags: pets\n"
    present = run_cli("tag", "mycat", "PETS", "new")
    assert present.exit_code == 0
    assert present.stderr == "Note: <mycat> already has the tag 'PETS'; nothing to add for it.\n"
    assert present.stdout == "<mycat> tags: new, pets\n"
    both = run_cli("tag", "mycat", "x", "y", "new", "--remove")
    assert both.stderr == "Note: <mycat> does not have the tags 'x', 'y'; nothing to remove for them.\n"
    assert run_cli("tag", "mycat", "pets", "--remove").stderr == ""


def test_check_and_reencode(run_cli, library_with_cat):
    result = run_cli("check", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["problems"] == []
    assert run_cli("check").stdout.strip() == "Library OK (1 concept)"
    again = run_cli("reencode", "--json")
    assert again.exit_code == 0, again.output
    assert [item["name"] for item in json.loads(again.stdout)] == ["mycat"]


def test_import_under_a_taken_name_names_the_flags(run_cli, library_with_cat, tmp_path):
    bundle = tmp_path / "mycat.elite.safetensors"
    assert run_cli("export", "mycat", "-o", bundle).exit_code == 0
    assert run_cli("rm", "mycat").exit_code == 0
    # Another concept now holds the name the bundle carries.
    other = draw_object_picture(tmp_path / "green.png", color=(10, 200, 10))
    assert run_cli("add", other, "--name", "mycat").exit_code == 0
    result = run_cli("import", bundle)
    assert result.exit_code == 1
    assert result.stderr == ("Error: a concept named 'mycat' already exists; pass --name to import it under another "
                             "name, or --replace to replace that one.\n")


def test_reencode_all_skips_current_concepts_and_imported_ones_do_not_stop_the_rest(
        run_cli, library_with_cat, dog_picture, other_tiny_models, tmp_path, monkeypatch):
    # <imported> has no source picture (it came from a bundle); <mydog> has one.
    bundle = tmp_path / "mycat.elite.safetensors"
    assert run_cli("export", "mycat", "-o", bundle).exit_code == 0
    assert run_cli("rm", "mycat").exit_code == 0
    assert run_cli("import", bundle, "--name", "imported").exit_code == 0
    assert run_cli("add", dog_picture).exit_code == 0

    # Made by the configured mappers already: left as they are, without loading models or encoding.
    import elite_cli.model.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("models were loaded although every concept is current")

    with monkeypatch.context() as patch:
        patch.setattr(elite_cli.model.loading, "load_models", no_loading)
        current = run_cli("reencode", "--json")
    assert current.exit_code == 0, current.output
    assert {item["name"]: item["changed"] for item in json.loads(current.stdout)} == {"imported": False, "mydog": False}

    # Other mappers: <mydog> is re-encoded; the imported one, which has no picture, is skipped with a
    # note (it stopped the command with an error).
    other = other_tiny_models
    monkeypatch.setenv("ELITE_GLOBAL_MAPPER", str(other.global_mapper))
    monkeypatch.setenv("ELITE_LOCAL_MAPPER", str(other.local_mapper))
    stale = run_cli("reencode")
    assert stale.exit_code == 0, stale.output
    assert re.fullmatch(r"Re-encoded <mydog> \(\d+\.\d\ds\)\n", stale.stdout), stale.stdout
    assert stale.stderr.startswith("Note: skipped <imported>: it has no stored source picture") \
        and stale.stderr.count("\n") == 1 and "Error" not in stale.stderr
    assert [row["stale"] for row in json.loads(run_cli("list", "--json").stdout)] == [True, False]
    # Named, it fails before the models load.
    named = run_cli("reencode", "mydog", "imported")
    assert named.exit_code == 1 and named.stdout == ""
    assert named.stderr.startswith("Error: concept 'imported' has no stored source image")


def test_repair_of_a_damaged_concept_keeps_its_picture_and_says_where(run_cli, library_with_cat, elite_home):
    concept_file = next((elite_home / "concepts").glob("*.safetensors"))
    concept_file.write_bytes(b"garbage")
    result = run_cli("check", "--repair")
    assert result.exit_code == 0, result.output
    kept = [path for path in (elite_home / "quarantine").glob("*/*") if ".image." in path.name]
    assert len(kept) == 1 and kept[0].read_bytes() == library_with_cat.read_bytes()
    assert f"moved to {kept[0].parent}" in result.stdout and "elite add" in result.stdout
    assert listed_names(run_cli) == []


def test_repair_of_a_stray_file_does_not_ask_to_add_pictures_again(run_cli, library_with_cat, elite_home):
    (elite_home / "concepts" / "notes.txt").write_text("mine")
    result = run_cli("check", "--repair")
    assert result.exit_code == 0, result.output
    assert "moved to" in result.stdout and "elite add" not in result.stdout


@pytest.mark.parametrize("damage", ["garbage", "bad page"])
def test_damaged_index_points_to_repair_which_rebuilds_it(run_cli, library_with_cat, elite_home, damage):
    database = elite_home / "library.db"
    for suffix in ("-wal", "-shm"):
        (elite_home / f"library.db{suffix}").unlink(missing_ok=True)
    if damage == "garbage":
        database.write_bytes(b"not a database at all " * 200)
    else:  # a valid SQLite header, damaged pages after it: the file opens, queries fail
        data = bytearray(database.read_bytes())
        data[100:] = bytes(len(data) - 100)
        database.write_bytes(bytes(data))
    damaged = database.read_bytes()
    failed = run_cli("list")
    assert failed.exit_code == 1
    assert failed.stderr.startswith("Error: ") and failed.stderr.count("\n") == 1
    assert "run `elite check --repair`" in failed.stderr and "Traceback" not in failed.stderr
    assert "rebuild_index" not in failed.stderr
    repaired = run_cli("check", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "library.db.broken-" in repaired.stdout
    assert listed_names(run_cli) == ["mycat"]
    # The damaged index is kept aside, not deleted (it held the generation history).
    assert [path.read_bytes() for path in elite_home.glob("library.db.broken-*")] == [damaged]


def test_import_under_another_name_of_a_stored_concept_says_how_to_rename(run_cli, library_with_cat, tmp_path):
    bundle = tmp_path / "mycat.safetensors"
    assert run_cli("export", "mycat", "-o", bundle).exit_code == 0
    result = run_cli("import", bundle, "--name", "tom")
    assert result.exit_code == 0, result.output
    assert "Already in the library as <mycat>" in result.stdout and "`elite rename mycat tom`" in result.stdout
    assert listed_names(run_cli) == ["mycat"]
    assert run_cli("rm", "mycat").exit_code == 0
    imported = run_cli("import", bundle, "--name", "tom")
    assert imported.exit_code == 0 and imported.stdout.startswith("Imported <tom>")
    assert listed_names(run_cli) == ["tom"]


def test_stale_concepts_are_refused_until_reencoded(run_cli, library_with_cat, other_tiny_models, tmp_path,
                                                    monkeypatch):
    other = other_tiny_models  # other mapper weights: the tiny set built with another seed
    monkeypatch.setenv("ELITE_GLOBAL_MAPPER", str(other.global_mapper))
    monkeypatch.setenv("ELITE_LOCAL_MAPPER", str(other.local_mapper))
    # These mappers are .pt pickles no command has loaded yet: list cannot tell without torch.
    unknown = run_cli("list")
    assert unknown.exit_code == 0 and re.search(r"mycat .*│ \?", unknown.stdout), unknown.stdout
    assert [row["stale"] for row in json.loads(run_cli("list", "--json").stdout)] == [None]
    out = tmp_path / "out"
    refused = run_cli("gen", "<mycat> on the beach", "-o", out, *FAST)
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: <mycat> was encoded with other mapper checkpoints than the configured ones; "
        "run `elite reencode mycat` or pass --allow-stale.\n"
    )
    assert not out.exists()
    # Loading them recorded their fingerprints: list marks it stale too (the same test gen applies).
    listed = run_cli("list")
    assert listed.exit_code == 0 and re.search(r"mycat .*│ yes", listed.stdout), listed.stdout
    assert "elite reencode" in listed.stderr
    assert [row["stale"] for row in json.loads(run_cli("list", "--json").stdout)] == [True]
    assert run_cli("gen", "<mycat> on the beach", "-o", out, "--allow-stale", *FAST).exit_code == 0
    assert run_cli("reencode", "mycat").exit_code == 0
    assert run_cli("gen", "<mycat> on the beach", "-o", out, *FAST).exit_code == 0
    assert [row["stale"] for row in json.loads(run_cli("list", "--json").stdout)] == [False]
    assert "yes" not in run_cli("list").stdout


def test_reencode_onto_a_concept_already_stored_merges_the_two(run_cli, library_with_cat, other_tiny_models, tmp_path,
                                                              monkeypatch):
    """The stale <mycat>'s picture was added again (as <coffee>) with the current mappers: its new
    encoding is <coffee>'s, and the library never stores one encoding twice, so they merge."""
    monkeypatch.setenv("ELITE_GLOBAL_MAPPER", str(other_tiny_models.global_mapper))
    monkeypatch.setenv("ELITE_LOCAL_MAPPER", str(other_tiny_models.local_mapper))
    assert run_cli("add", library_with_cat, "--name", "coffee", "--tag", "drinks").exit_code == 0
    out = tmp_path / "out"
    refused = run_cli("gen", "<mycat> on the beach", "-o", out, *FAST)
    assert refused.exit_code == 1 and "run `elite reencode mycat`" in refused.stderr
    merged = run_cli("reencode", "mycat")
    assert merged.exit_code == 0, merged.output
    assert re.fullmatch(r"Merged <mycat> into <coffee>: re-encoded, it is the same concept as <coffee> .*"
                        r"write <coffee> in prompts, or run `elite rename coffee mycat` to keep the old name "
                        r"\(\d+\.\d\ds\)\n", merged.stdout), merged.stdout
    listed = json.loads(run_cli("list", "--json").stdout)
    assert [(row["name"], row["tags"], row["stale"]) for row in listed] == [("coffee", ["drinks", "pets"], False)]
    assert run_cli("check").exit_code == 0
    assert run_cli("rename", "coffee", "mycat").exit_code == 0  # the advice works, and so does gen then
    assert run_cli("gen", "<mycat> on the beach", "-o", out, *FAST).exit_code == 0
    again = json.loads(run_cli("reencode", "mycat", "--json").stdout)
    assert [(item["name"], item["changed"], "merged_from" in item) for item in again] == [("mycat", False, False)]


def test_list_stale_flag_is_unknown_without_readable_mappers(run_cli, library_with_cat, tmp_path, monkeypatch):
    monkeypatch.setenv("ELITE_GLOBAL_MAPPER", str(tmp_path / "missing.safetensors"))
    assert [row["stale"] for row in json.loads(run_cli("list", "--json").stdout)] == [None]


def test_list_fingerprints_mappers_as_loading_does(tiny_models, loaded_models, tmp_path):
    from elite_cli.library.fingerprints import mapper_fingerprint, remember, safetensors_fingerprint
    from elite_cli.model.mappers import convert_reference_checkpoint

    converted = tmp_path / "global.safetensors"
    convert_reference_checkpoint(tiny_models.global_mapper, converted, role="global")
    assert safetensors_fingerprint(converted) == loaded_models.global_fingerprint
    # A .pt is known only from the cache that loading the models fills (unpickling needs torch).
    assert mapper_fingerprint(tmp_path, tiny_models.local_mapper) is None
    remember(tmp_path, tiny_models.local_mapper, loaded_models.local_fingerprint)
    assert mapper_fingerprint(tmp_path, tiny_models.local_mapper) == loaded_models.local_fingerprint
    # The safetensors file was hashed from its bytes and remembered too.
    assert mapper_fingerprint(tmp_path, converted) == loaded_models.global_fingerprint
    assert loaded_models.global_fingerprint in json.loads((tmp_path / "mapper-fingerprints.json").read_text()).values()


BAD_IMAGES = {
    "missing": lambda d: d / "missing.jpg",
    "not an image": lambda d: (d / "notes.jpg").write_text("hello") and d / "notes.jpg",
    "corrupt": lambda d: truncated_png(d / "broken.png"),
}


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
def test_add_checks_every_image_before_storing_any(run_cli, library_with_cat, tmp_path: Path, monkeypatch, bad):
    import elite_cli.commands.concepts

    def no_models(*args, **kwargs):
        raise AssertionError("the models must not load before every input is checked")

    monkeypatch.setattr(elite_cli.commands.concepts, "load_models_with_status", no_models)
    good = [draw_object_picture(tmp_path / f"good{i}.png", color=(30 * i, 90, 200)) for i in range(2)]
    result = run_cli("add", *good, BAD_IMAGES[bad](tmp_path))
    assert result.exit_code == 1 and result.stderr.startswith("Error: image '"), result.output
    assert result.stderr.count("\n") == 1
    assert listed_names(run_cli) == ["mycat"]


def test_add_checks_the_mask_before_loading_models(run_cli, library_with_cat, tmp_path: Path, monkeypatch):
    import elite_cli.commands.concepts

    def no_models(*args, **kwargs):
        raise AssertionError("the models must not load before the mask is checked")

    monkeypatch.setattr(elite_cli.commands.concepts, "load_models_with_status", no_models)
    picture = draw_object_picture(tmp_path / "cat.png", 64, color=(1, 2, 3))
    result = run_cli("add", picture, "--mask", draw_object_picture(tmp_path / "mask.png", 32))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: mask is 32x32 but the image is 64x64"), result.stderr


def test_adding_the_same_picture_again_under_its_default_name_finds_it(run_cli, library_with_cat, tmp_path: Path):
    again = shutil.copy(library_with_cat, tmp_path / "mycat.png")
    result = run_cli("add", again)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Already in the library as <mycat>")
    assert listed_names(run_cli) == ["mycat"]


# --- every user error: one line, exit 1, nothing written --------------------------------------


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a huge size: PIL's decompression-bomb guard must refuse it on open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def truncated_png(path: Path) -> Path:
    draw_object_picture(path, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def textual_inversion_file(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 32)}, str(path))
    return path


def truncated_bundle(path: Path) -> Path:
    """The first half of the library's own concept file (a bundle without thumbnail)."""
    import os

    data = next((Path(os.environ["ELITE_HOME"]) / "concepts").glob("*.safetensors")).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


ERROR_CASES = [
    # (id, args builder, expected start of the message)
    ("missing file", lambda d: ["add", d / "nope.jpg"], "Error: image '{d}/nope.jpg' does not exist"),
    ("not an image", lambda d: ["add", (d / "notes.jpg").write_text("hello") and d / "notes.jpg"], "Error: image '{d}/notes.jpg' is not an image"),
    ("corrupt image", lambda d: ["add", truncated_png(d / "broken.png")], "Error: image '{d}/broken.png' is corrupt or truncated"),
    ("decompression bomb", lambda d: ["add", write_png_header_only(d / "bomb.png", 30000, 30000)], "Error: image '{d}/bomb.png' is too large"),
    ("mask wrong size", lambda d: ["add", draw_object_picture(d / "cat.png", 64), "--mask", draw_object_picture(d / "mask.png", 32)], "Error: "),
    ("bad name", lambda d: ["add", draw_object_picture(d / "cat.png"), "--name", "no spaces!"], "Error: "),
    ("name clash", lambda d: ["add", draw_object_picture(d / "mycat.png", color=(10, 200, 10))], "Error: a concept named 'mycat' already exists"),
    ("unknown concept", lambda d: ["gen", "<mycta> on the beach", "-o", d / "out", *FAST], "Error: "),
    ("size not multiple of 8", lambda d: ["gen", "<mycat>", "--width", "60", "-o", d / "out"], "Error: --width must be a positive multiple of 8"),
    ("bad scheduler", lambda d: ["gen", "<mycat>", "--scheduler", "nope", "-o", d / "out"], "Error: --scheduler 'nope' is not supported"),
    ("no cuda", lambda d: ["--device", "cuda", "gen", "<mycat>", "-o", d / "out", *FAST], "Error: --device cuda was asked for"),
    ("missing model", lambda d: ["--global-mapper", d / "missing.safetensors", "gen", "<mycat>", "-o", d / "out", *FAST], "Error: "),
    ("show unknown", lambda d: ["show", "nobody"], "Error: "),
    ("rm unknown", lambda d: ["rm", "mycat", "nobody"], "Error: "),
    ("import non-concept", lambda d: ["import", (d / "x.safetensors").write_bytes(b"junk") and d / "x.safetensors"], "Error: "),
    ("import picture", lambda d: ["import", draw_object_picture(d / "cat.png")], "Error: '{d}/cat.png' is not a safetensors file; elite import accepts only concept bundles written by `elite export`"),
    ("import embedding", lambda d: ["import", textual_inversion_file(d / "ti.safetensors")], "Error: '{d}/ti.safetensors' is a textual-inversion embedding"),
    ("import truncated", lambda d: ["import", truncated_bundle(d / "cut.safetensors")], "Error: '{d}/cut.safetensors' is truncated"),
    ("import bad name", lambda d: ["import", truncated_bundle(d / "cut.safetensors"), "--name", "a b"], "Error: concept name 'a b' is not valid"),
    ("export no folder", lambda d: ["export", "mycat", "-o", d / "out" / "x.safetensors"], "Error: folder '{d}/out' does not exist"),
    ("export no folder, TI", lambda d: ["export", "mycat", "-f", "a1111", "-o", d / "out" / "x.safetensors"], "Error: folder '{d}/out' does not exist"),
    ("export exists, TI", lambda d: ["export", "mycat", "-f", "diffusers", "-o", (d / "x.safetensors").write_bytes(b"mine") and d / "x.safetensors"], "Error: '{d}/x.safetensors' already exists; pass --overwrite"),
    ("again unknown run", lambda d: ["gen", "--again", "9999", "-o", d / "out"], "Error: "),
    ("again with image settings", lambda d: ["gen", "--again", "9999", "-n", "3", "--seed", "1", "--steps", "2", "-o", d / "out"],
     "Error: --again repeats the run with its own settings, so it cannot be combined with -n, --seed, --steps; drop them"),
    ("again png with lambda", lambda d: ["gen", "--again", d / "x.png", "--lambda", "0.5", "-o", d / "out"],
     "Error: --again repeats the run with its own settings, so it cannot be combined with --lambda; drop it"),
]


@pytest.mark.parametrize("build_args, expected", [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES])
def test_user_error_is_one_line_and_writes_nothing(run_cli, library_with_cat, tmp_path: Path, build_args, expected):
    import torch

    if "--device" in expected and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = tmp_path / "work"
    work.mkdir()
    before_list = run_cli("list", "--json").stdout
    before_history = run_cli("history", "--json").stdout
    result = run_cli(*build_args(work))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(expected.format(d=work)), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (work / "out").exists()
    assert run_cli("list", "--json").stdout == before_list
    assert run_cli("history", "--json").stdout == before_history


def test_history_shows_one_line_per_whole_run(run_cli, elite_home):
    from elite_cli.library import ConceptStore

    store = ConceptStore(elite_home)
    long_prompt = "<mycat> " + "on a very long and winding beach road " * 4
    for run_id, prompts, count in (("run-aaaa", [long_prompt, "b", "c"], 2), ("run-bbbb", ["<mycat> alone"], 1)):
        for number, prompt in enumerate(prompts):
            for index in range(count):
                store.record_generation(run_id=run_id, prompt=prompt, negative_prompt="", seed=7 + index, image_index=index,
                                        parameters={"job": number, "num_images": count}, concept_ids={},
                                        output_path=None, duration_s=None)
    table = run_cli("history", env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert len(lines) == 4, table.stdout  # header, rule, one line per run
    cells = [[cell.strip() for cell in line.split("│")] for line in lines[2:]]
    assert [(row[0], row[2], row[3]) for row in cells] == [("run-bbbb", "7", "1"), ("run-aaaa", "7", "6")]
    assert cells[0][4] == "<mycat> alone" and cells[1][4].startswith("<mycat> on a very") and cells[1][4].endswith("…")

    # --limit counts runs, and a run is listed whole (its image count too).
    newest_two = run_cli("history", "--limit", "1", env={"COLUMNS": "200"})
    assert len(newest_two.stdout.splitlines()) == 3 and "<mycat> alone" in newest_two.stdout
    both = json.loads(run_cli("history", "--limit", "2", "--json").stdout)
    assert [(run["run_id"], len(run["images"]), len(run["prompts"])) for run in both] == [("run-bbbb", 1, 1), ("run-aaaa", 6, 3)]
    wide = run_cli("history", env={"COLUMNS": "300"})
    assert f"{' '.join(long_prompt.split())} (+2 more prompts)" in wide.stdout
