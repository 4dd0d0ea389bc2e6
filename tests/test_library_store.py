"""ConceptStore basics: exact round trip, names, clashes, de-duplication, listing, edits, history."""

from __future__ import annotations

import json
import os

import pytest
import torch

from elite_cli.errors import ConceptNotFound, InputError, LibraryError, NameClash
from elite_cli.library import ConceptStore, name_from_stem, validate_name
from elite_cli.library import conceptfile as cf
from library_support import GLOBAL_FP, LOCAL_FP, SAMPLES, make_picture, random_concept


@pytest.fixture
def store(tmp_path):
    with ConceptStore(tmp_path / "home") as opened:
        yield opened


def add(store, tmp_path, seed, name=None, **kwargs):
    picture = make_picture(tmp_path / f"picture{seed}.png", seed)
    return store.add(random_concept(seed, **kwargs.pop("concept", {})), image_path=picture, name=name, **kwargs)


def test_default_home_follows_elite_home(monkeypatch, tmp_path):
    from elite_cli.common.paths import default_home

    monkeypatch.setenv("ELITE_HOME", str(tmp_path / "lib"))
    assert default_home() == tmp_path / "lib"
    monkeypatch.delenv("ELITE_HOME")
    assert default_home().name == "elite"


def test_store_creates_layout_with_wal(tmp_path):
    store = ConceptStore(tmp_path / "new" / "home")
    assert (tmp_path / "new/home/library.db").is_file() and (tmp_path / "new/home/concepts").is_dir()
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 10000


def test_round_trip_is_exact_in_fp16(store, tmp_path):
    concept = random_concept(3, width=48, grid=5)
    picture = make_picture(tmp_path / "cat.png", 3)
    record = store.add(concept, image_path=picture, mask_path=SAMPLES / "chelsea_mask.png")
    loaded = store.load("cat")
    for name in ("words", "local", "mask"):
        expected = getattr(concept, name).to(torch.float16).float()
        assert getattr(loaded, name).dtype == torch.float32
        assert torch.equal(getattr(loaded, name), expected)
    assert loaded.name == "cat" and record.text_width == 48 and record.grid == 5
    assert loaded.provenance["image_sha256"] == cf.sha256_file(picture)
    assert loaded.provenance["mask_sha256"] == cf.sha256_file(SAMPLES / "chelsea_mask.png")
    assert loaded.provenance["global_mapper"] == GLOBAL_FP
    # Sources are copied byte for byte beside the concept, plus a small thumbnail.
    assert record.image_path.read_bytes() == picture.read_bytes()
    assert record.mask_path.read_bytes() == (SAMPLES / "chelsea_mask.png").read_bytes()
    from PIL import Image

    assert max(Image.open(record.thumbnail_path).size) <= 128


def test_concept_file_is_self_describing(store, tmp_path):
    record = add(store, tmp_path, 1, name="mycat", tags=["pets"])
    metadata = cf.read_metadata(record.file_path)
    assert metadata["format"] == "elite-concept" and metadata["format_version"] == cf.FORMAT_VERSION
    assert metadata["name"] == "mycat" and json.loads(metadata["tags"]) == ["pets"]
    assert metadata["concept_id"] == record.id and record.id.startswith("sha256:")
    assert (metadata["text_width"], metadata["grid"], metadata["num_words"]) == ("32", "4", "5")
    assert metadata["global_mapper"] == GLOBAL_FP and metadata["local_mapper"] == LOCAL_FP
    assert metadata["created"].endswith("Z")


def test_sd1_sized_concept_is_under_420_kb(store, tmp_path):
    record = add(store, tmp_path, 2, concept={"width": 768, "grid": 16})
    assert record.file_path.stat().st_size < 420 * 1024


@pytest.mark.parametrize(
    ("name", "valid"),
    [("cat", True), ("my-cat_2", True), ("A" * 64, True), ("", False), ("A" * 65, False), ("my cat", False),
     ("a/b", False), ("..", False), ("../etc", False), ("tab\there", False), ("nul\x00", False), ("café", False),
     ("<cat>", False), ("cat.v2", False)],
)
def test_name_rules(name, valid):
    if valid:
        assert validate_name(name) == name
    else:
        with pytest.raises(InputError, match="letters, digits, '-' and '_', 1 to 64 characters"):
            validate_name(name)


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("My Cat (2)", "My_Cat_2"), ("café", "cafe"), ("..", "concept"), ("a" * 80, "a" * 64), ("IMG_0001", "IMG_0001")],
)
def test_default_name_from_file_stem(stem, expected):
    assert name_from_stem(stem) == expected
    validate_name(name_from_stem(stem))


def test_default_name_comes_from_image_stem(store, tmp_path):
    picture = make_picture(tmp_path / "Fluffy cat!.png", 5)
    assert store.add(random_concept(5), image_path=picture).name == "Fluffy_cat"


def test_name_clash_is_refused_case_insensitively_unless_replace(store, tmp_path):
    first = add(store, tmp_path, 1, name="Cat")
    with pytest.raises(NameClash, match="'Cat' already exists"):
        add(store, tmp_path, 2, name="cat")
    replaced = add(store, tmp_path, 2, name="cat", replace=True)
    assert replaced.id != first.id and store.count() == 1
    assert not first.file_path.exists() and not first.image_path.exists() and not first.thumbnail_path.exists()
    assert store.check().ok


def test_same_image_mask_and_mappers_returns_existing(store, tmp_path):
    picture = make_picture(tmp_path / "cat.png", 1)
    first = store.add(random_concept(1), image_path=picture)
    # A different encoding of the same picture by the same mappers is a duplicate too.
    again = store.add(random_concept(99), image_path=picture, name="other")
    assert again.duplicate and again.id == first.id and again.name == "cat" and store.count() == 1
    other_mappers = store.add(random_concept(2, global_fp="sha256:" + "c" * 64), image_path=picture, name="newer")
    assert not other_mappers.duplicate and store.count() == 2
    assert store.find_duplicate(first.image_sha256, "", GLOBAL_FP, LOCAL_FP).id == first.id


def test_same_picture_by_other_mappers_under_its_name_points_to_reencode(store, tmp_path):
    picture = make_picture(tmp_path / "cat.png", 1)
    store.add(random_concept(1), image_path=picture)
    with pytest.raises(NameClash, match=r"made from this picture by other mapper weights; run `elite reencode cat`"):
        store.add(random_concept(2, global_fp="sha256:" + "c" * 64), image_path=picture)
    assert store.count() == 1


def test_add_refuses_nonfinite_and_mismatched_sources(store, tmp_path):
    concept = random_concept(1)
    concept.words[0, 0] = float("nan")
    with pytest.raises(LibraryError, match="non-finite"):
        store.add(concept, image_path=make_picture(tmp_path / "a.png", 1))
    concept = random_concept(2)
    concept.provenance["image_sha256"] = "sha256:" + "0" * 64
    with pytest.raises(InputError, match="does not match"):
        store.add(concept, image_path=make_picture(tmp_path / "b.png", 2))
    with pytest.raises(InputError, match="does not exist"):
        store.add(random_concept(3), image_path=tmp_path / "missing.png")
    assert store.count() == 0 and os.listdir(store.concepts_dir) == []


def test_get_by_name_or_id_prefix(store, tmp_path):
    record = add(store, tmp_path, 1, name="Mochi")
    assert store.get("mochi").id == record.id
    assert store.get(record.short_id).name == "Mochi"
    assert store.get(record.id[:15]).name == "Mochi"  # "sha256:" + 8 hex
    with pytest.raises(ConceptNotFound, match=r"no concept named 'mochj'.*did you mean 'Mochi'"):
        store.get("mochj")
    assert store.suggestions("moci") == ["Mochi"]


def test_ambiguous_id_prefix_is_an_error(store):
    # Two index rows whose ids share 'abcd' (crafted: real ids would need ~65,000 concepts).
    with store._write():
        for digit, name in (("1", "first"), ("2", "second")):
            metadata = {"concept_id": "sha256:abcd" + digit * 60, "name": name, "created": cf.utc_now(),
                        "text_width": "32", "grid": "4", "image_sha256": "sha256:" + digit * 64, "mask_sha256": "",
                        "tags": "[]", "global_mapper": GLOBAL_FP, "local_mapper": LOCAL_FP, "base_model": "b",
                        "image_encoder": "e"}
            store._insert_row(metadata, "sha256:f", None, None, updated=cf.utc_now())
    with pytest.raises(LibraryError, match=r"^id prefix 'abcd' is ambiguous: it matches abcd11111111 <first>, "
                       r"abcd22222222 <second>; give more hex digits, or the concept's name\.$"):
        store.get("abcd")
    assert store.get("ABCD2").name == "second" and store.get("sha256:abcd1").name == "first"
    with pytest.raises(ConceptNotFound, match=r"no concept named 'abc' \(an id prefix needs at least 4 hex digits\)"):
        store.get("abc")  # under 4 hex digits is never taken as an id prefix
    with pytest.raises(ConceptNotFound, match=r"^no concept named 'abce' or with an id starting with it in the library; "
                       r"give a name or an id prefix of at least 4 hex digits"):
        store.get("abce")


def test_ambiguous_id_prefix_lists_a_few_matches(store):
    with store._write():
        for digit in "123456789":
            metadata = {"concept_id": "sha256:beef" + digit * 60, "name": f"c{digit}", "created": cf.utc_now(),
                        "text_width": "32", "grid": "4", "image_sha256": "sha256:" + digit * 64, "mask_sha256": "",
                        "tags": "[]", "global_mapper": GLOBAL_FP, "local_mapper": LOCAL_FP, "base_model": "b",
                        "image_encoder": "e"}
            store._insert_row(metadata, "sha256:f", None, None, updated=cf.utc_now())
    with pytest.raises(LibraryError, match=r"matches beef11111111 <c1>, .*beef55555555 <c5>, \.\.\.; give more") as error:
        store.get("beef")
    assert "<c6>" not in str(error.value)


def test_list_filters_sorts_and_pages(store, tmp_path):
    for seed, (name, tags) in enumerate([("cat", ["pet"]), ("catnip", []), ("dog", ["pet", "Big"]), ("Cathy", [])]):
        add(store, tmp_path, seed, name=name, tags=tags)
    assert [r.name for r in store.list()] == ["cat", "Cathy", "catnip", "dog"]
    assert [r.name for r in store.list(tag="PET")] == ["cat", "dog"]
    assert [r.name for r in store.list(pattern="cat*")] == ["cat", "Cathy", "catnip"]
    assert [r.name for r in store.list(pattern="c?t")] == ["cat"]
    assert [r.name for r in store.list(pattern="nip")] == ["catnip"]
    assert [r.name for r in store.list(pattern="%")] == []  # SQL wildcards are literal
    assert [r.name for r in store.list(limit=2, offset=1)] == ["Cathy", "catnip"]
    assert [r.name for r in store.list(sort="recent")][0] == "Cathy"
    assert store.count() == 4 and store.count(tag="pet") == 2 and store.count(pattern="cat*") == 3
    assert store.get("dog").tags == ("Big", "pet")
    with pytest.raises(InputError, match="'name' or 'recent'"):
        store.list(sort="size")


def test_rename_and_tags_update_index_and_file(store, tmp_path):
    record = add(store, tmp_path, 1, name="cat")
    renamed = store.rename("cat", "Mochi")
    assert renamed.id == record.id and store.get("mochi").name == "Mochi"
    assert cf.read_metadata(record.file_path)["name"] == "Mochi"
    tagged = store.tag("Mochi", "pet", "orange")
    assert tagged.tags == ("orange", "pet")
    assert json.loads(cf.read_metadata(record.file_path)["tags"]) == ["orange", "pet"]
    assert store.untag("Mochi", "ORANGE").tags == ("pet",)
    assert store.check().ok  # file hash in the index follows the rewrite
    add(store, tmp_path, 2, name="dog")
    with pytest.raises(NameClash):
        store.rename("dog", "mochi")
    assert store.rename("Mochi", "mochi").name == "mochi"  # a change of case only is allowed
    with pytest.raises(InputError):
        store.tag("mochi", "bad tag")


def test_failed_rename_leaves_file_and_row_unchanged(store, tmp_path, monkeypatch):
    record = add(store, tmp_path, 1, name="cat")
    before = record.file_path.read_bytes()

    original = cf.atomic_write
    calls = []

    def write_then_fail_once(path, data):
        # The new file lands, then the step fails, as if the disk filled before the commit.
        original(path, data)
        calls.append(path)
        if len(calls) == 1:
            raise OSError("disk full")

    monkeypatch.setattr(cf, "atomic_write", write_then_fail_once)
    with pytest.raises(OSError):
        store.rename("cat", "dog")
    assert len(calls) == 2  # the new bytes, then the old ones put back
    assert store.get("cat").id == record.id and record.file_path.read_bytes() == before
    assert store.check().ok


def test_remove_deletes_file_and_row_or_keeps_sources(store, tmp_path):
    one = add(store, tmp_path, 1, name="one")
    two = add(store, tmp_path, 2, name="two")
    assert store.remove("one") == []
    assert not any(p.exists() for p in (one.file_path, one.image_path, one.thumbnail_path))
    kept = store.remove("two", keep_sources=True)
    assert [p.name for p in kept] == [f"two-{two.short_id}.image.png"]
    assert kept[0].read_bytes() == (tmp_path / "picture2.png").read_bytes()
    assert store.count() == 0 and os.listdir(store.concepts_dir) == [] and store.check().ok
    with pytest.raises(ConceptNotFound):
        store.remove("one")


def test_injected_failure_between_file_write_and_commit_leaves_nothing(store, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("injected failure after the files were renamed into place")

    monkeypatch.setattr(ConceptStore, "_insert_row", fail)
    with pytest.raises(RuntimeError, match="injected"):
        add(store, tmp_path, 1, name="cat")
    assert store.count() == 0 and os.listdir(store.concepts_dir) == []


def test_failed_replace_keeps_the_old_concept(store, tmp_path, monkeypatch):
    old = add(store, tmp_path, 1, name="cat")
    monkeypatch.setattr(ConceptStore, "_insert_row", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        add(store, tmp_path, 2, name="cat", replace=True)
    assert store.get("cat").id == old.id
    assert sorted(os.listdir(store.concepts_dir)) == sorted(
        p.name for p in (old.file_path, old.image_path, old.thumbnail_path))
    assert store.check().ok


class FakeEncoder:
    """Stands in for elite_cli.model.encoder.Encoder (a collaborator, not the code under test)."""

    def __init__(self, seed, global_fp):
        self.seed, self.global_fp, self.calls = seed, global_fp, []

    def encode(self, image, mask=None, crop="auto"):
        self.calls.append((image, mask))
        return random_concept(self.seed, global_fp=self.global_fp)


def test_stale_concepts_and_reencode(store, tmp_path):
    old = add(store, tmp_path, 1, name="cat", tags=["pet"])
    new_fp = "sha256:" + "d" * 64
    assert not old.mapper_matches(new_fp, LOCAL_FP)
    assert [r.name for r in store.stale(new_fp, LOCAL_FP)] == ["cat"]
    encoder = FakeEncoder(7, new_fp)
    fresh = store.reencode("cat", encoder)
    assert encoder.calls == [(old.image_path, None)]
    assert fresh.id != old.id and fresh.name == "cat" and fresh.tags == ("pet",) and fresh.global_mapper == new_fp
    assert fresh.image_path.read_bytes() == (tmp_path / "picture1.png").read_bytes()
    assert store.stale(new_fp, LOCAL_FP) == [] and store.count() == 1 and store.check().ok
    assert store.reencode("cat", FakeEncoder(7, new_fp)).duplicate  # already current: nothing changes


def test_reencode_onto_an_encoding_already_stored_merges_into_that_concept(store, tmp_path):
    stale = add(store, tmp_path, 1, name="coffee_trained", tags=["mine", "Pet"])
    new_fp = "sha256:" + "d" * 64
    current = store.add(random_concept(7, global_fp=new_fp), image_path=tmp_path / "picture1.png", name="coffee",
                        tags=["pet"])
    merged = store.reencode("coffee_trained", FakeEncoder(7, new_fp))
    assert merged.duplicate and merged.id == current.id and merged.name == "coffee"
    assert merged.tags == ("mine", "pet")  # the stale one's tags join (case-insensitively)
    assert [record.name for record in store.list()] == ["coffee"] and store.stale(new_fp, LOCAL_FP) == []
    assert not stale.file_path.exists() and not stale.thumbnail_path.exists()
    assert merged.image_path.is_file() and store.check().ok


def test_reencode_needs_a_stored_source(store, tmp_path):
    picture = make_picture(tmp_path / "cat.png", 1)
    store.add(random_concept(1), image_path=picture, keep_sources=False)
    with pytest.raises(LibraryError, match="no stored source image"):
        store.reencode("cat", FakeEncoder(2, GLOBAL_FP))


def test_generation_history(store):
    run = store.new_run_id()
    for index in range(2):
        store.record_generation(run_id=run, prompt="<cat> on a beach", negative_prompt="blurry", seed=7 + index,
                                image_index=index, parameters={"steps": 50, "guidance_scale": 5.0},
                                concept_ids={"cat": "sha256:" + "1" * 64}, output_path=f"out/{index}.png",
                                duration_s=1.5)
    other = store.new_run_id()
    store.record_generation(run_id=other, prompt="a dog", negative_prompt="", seed=1, image_index=0, parameters={},
                            concept_ids={}, output_path=None, duration_s=None)
    entries = store.get_run(run[:8])
    assert [(e.seed, e.image_index, e.output_path) for e in entries] == [(7, 0, "out/0.png"), (8, 1, "out/1.png")]
    assert entries[0].parameters == {"steps": 50, "guidance_scale": 5.0} and entries[0].concept_ids["cat"]
    assert [e.prompt for e in store.list_history()] == ["a dog", "<cat> on a beach", "<cat> on a beach"]
    assert [e.run_id for e in store.list_history(contains="beach", limit=1)] == [run]
    with pytest.raises(LibraryError, match="no generation run"):
        store.get_run("zzz")
    with pytest.raises(InputError, match="JSON"):
        store.record_generation(run_id=run, prompt="p", negative_prompt="", seed=0, image_index=0,
                                parameters={"x": object()}, concept_ids={}, output_path=None, duration_s=None)


def test_listing_does_not_import_torch_or_sqlite_utils(tmp_path):
    """Reading a library whose schema is current needs only the stdlib sqlite3 (fast `elite list`);
    a new library is created and migrated through sqlite-utils."""
    import subprocess
    import sys

    code = ("import sys; from elite_cli.library import ConceptStore; s = ConceptStore(sys.argv[1]); "
            "s.list(); s.count(); s.list_history(); print(sorted(m for m in ('torch', 'sqlite_utils') if m in sys.modules))")

    def imported() -> str:
        return subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], capture_output=True, text=True,
                              cwd=str(SAMPLES.parent.parent), check=True).stdout.strip()

    assert imported() == "['sqlite_utils']"  # the first open creates the schema
    assert imported() == "[]"


def test_generation_refuses_concepts_from_other_mappers(store, tmp_path):
    add(store, tmp_path, 1, name="cat")
    concepts = store.for_generation(["Cat"], GLOBAL_FP, LOCAL_FP)
    assert list(concepts) == ["Cat"] and concepts["Cat"].name == "cat"
    other = "sha256:" + "e" * 64
    with pytest.raises(LibraryError, match=r"concept 'cat' was encoded with other local mapper weights.*re-encode"):
        store.for_generation(["cat"], GLOBAL_FP, other)
    assert store.for_generation(["cat"], other, other, allow_mapper_mismatch=True)["cat"].words.shape == (5, 32)
