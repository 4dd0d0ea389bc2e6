"""check finds every kind of inconsistency; repair rebuilds a usable index from the files alone."""

from __future__ import annotations

import os

import pytest

from elite_cli.library import ConceptStore
from elite_cli.library import conceptfile as cf
from library_support import make_picture, random_concept


@pytest.fixture
def store(tmp_path):
    store = ConceptStore(tmp_path / "home")
    for seed, name in enumerate(["cat", "dog", "owl"]):
        picture = make_picture(tmp_path / f"{name}.png", seed)
        store.add(random_concept(seed), image_path=picture, tags=[f"t{seed}"])
    assert store.check().ok
    return store


def kinds(report):
    return sorted(problem.kind for problem in report.problems)


def assert_repaired(store):
    report = store.repair()
    assert report.after.ok, report.after.problems
    assert store.check().ok
    return report


def quarantined(store):
    """{file name: bytes} of everything repairs moved to quarantine/<time>/ folders."""
    return {path.name: path.read_bytes() for path in (store.home / "quarantine").glob("*/*")}


def test_missing_file_is_found_and_the_row_dropped(store):
    cat = store.get("cat")
    picture, thumbnail = cat.image_path.read_bytes(), cat.thumbnail_path.read_bytes()
    os.remove(cat.file_path)
    assert kinds(store.check()) == ["missing-file"]
    report = assert_repaired(store)
    assert [r.name for r in store.list()] == ["dog", "owl"]
    assert len(os.listdir(store.concepts_dir)) == 6  # no companions of the lost concept remain
    # The user's picture is kept where the report says, with its thumbnail: nothing is deleted.
    assert quarantined(store) == {cat.image_path.name: picture, cat.thumbnail_path.name: thumbnail}
    assert not any(action.startswith("deleted") for action in report.actions), report.actions
    assert f"moved {cat.thumbnail_path.name} to quarantine/{report.quarantine.name}/" in "\n".join(report.actions)
    assert report.quarantine.parent == store.home / "quarantine"
    assert (report.quarantine / cat.image_path.name).exists()


def test_hash_mismatch_is_reindexed_from_the_file(store):
    record = store.get("dog")
    # Another program rewrote the file with a new name in its metadata (a valid concept file).
    stored = cf.load_path(record.file_path)
    cf.atomic_write(record.file_path, cf.serialize({k: stored.tensors[k] for k in cf.CONCEPT_TENSORS},
                                                   {**stored.metadata, "name": "hound"}))
    assert kinds(store.check()) == ["hash-mismatch"]
    assert not store.check(verify_hashes=False).problems  # the cheap check skips hashing
    assert_repaired(store)
    assert store.get("hound").id == record.id and store.get("hound").image_path.exists()


def test_corrupted_file_is_quarantined(store):
    record = store.get("owl")
    data = bytearray(record.file_path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the tensor data
    record.file_path.write_bytes(bytes(data))
    assert kinds(store.check()) == ["hash-mismatch"]
    report = assert_repaired(store)
    assert any("quarantine" in action for action in report.actions)
    # The damaged file and the concept's source picture stay together, for the user to add again.
    assert sorted(quarantined(store)) == sorted([record.file_path.name, record.image_path.name,
                                                 record.thumbnail_path.name])
    assert (report.quarantine / record.image_path.name).read_bytes() == (store.home.parent / "owl.png").read_bytes()
    assert [r.name for r in store.list()] == ["cat", "dog"]


def test_a_second_repair_does_not_overwrite_what_the_first_kept(store):
    for name in ("cat", "dog"):
        os.remove(store.get(name).file_path)
        assert_repaired(store)
    assert len(quarantined(store)) == 4 and len(list((store.home / "quarantine").iterdir())) == 2  # picture + thumbnail each


def test_orphans_temps_and_strays(store, tmp_path):
    (store.concepts_dir / ".tmp-abc-x.safetensors").write_bytes(b"half")
    (store.concepts_dir / ("e" * 64 + ".thumb.png")).write_bytes(b"x")
    (store.concepts_dir / "notes.txt").write_text("mine")
    assert kinds(store.check()) == ["orphan-companion", "stray-file", "temp-file"]
    assert_repaired(store)
    assert sorted(quarantined(store)) == ["e" * 64 + ".thumb.png", "notes.txt"]  # only the temp file is deleted
    assert store.count() == 3


def test_lost_index_is_rebuilt_from_files_with_names_and_tags(store):
    store.rename("cat", "Mochi")
    before = {r.id: (r.name, r.tags, r.image_sha256, r.global_mapper, r.image_path) for r in store.list()}
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (store.home / f"library.db{suffix}").unlink(missing_ok=True)
    fresh = ConceptStore(store.home)
    assert kinds(fresh.check()) == ["orphan-file"] * 3
    assert_repaired(fresh)
    after = {r.id: (r.name, r.tags, r.image_sha256, r.global_mapper, r.image_path) for r in fresh.list()}
    assert after == before


def test_orphan_whose_name_is_taken_gets_a_free_name(store, tmp_path):
    cat = store.get("cat")
    data, image = cat.file_path.read_bytes(), cat.image_path.read_bytes()
    store.remove("cat")
    store.add(random_concept(10), image_path=make_picture(tmp_path / "cat.png", 10))  # a new 'cat'
    cat.file_path.write_bytes(data)
    cat.image_path.write_bytes(image)
    assert kinds(store.check()) == ["orphan-file"]
    assert_repaired(store)
    assert store.get(cat.id).name == "cat-2"
    assert cf.read_metadata(cat.file_path)["name"] == "cat-2"  # the file agrees, so a rebuild agrees


def test_interrupted_removal_is_undone_or_finished(store):
    cat, dog = store.get("cat"), store.get("dog")
    # Uncommitted removal: the row is still there, the file was renamed.
    os.replace(cat.file_path, str(cat.file_path) + cf.REMOVED_SUFFIX)
    # Committed removal: the row is gone, the renamed file and sources were not deleted yet.
    store.db.execute("DELETE FROM concept_tags WHERE concept_id = ?", [dog.id])
    store.db.execute("DELETE FROM concepts WHERE id = ?", [dog.id])
    store.db.conn.commit()
    os.replace(dog.file_path, str(dog.file_path) + cf.REMOVED_SUFFIX)
    assert kinds(store.check()) == ["removed-file", "removed-file"]
    assert_repaired(store)
    assert [r.name for r in store.list()] == ["cat", "owl"] and store.load("cat").words.shape == (5, 32)
    assert not any(name.startswith(cf.hex_of(dog.id)) for name in os.listdir(store.concepts_dir))


def test_missing_source_and_thumbnail(store):
    owl = store.get("owl")
    owl.image_path.unlink()
    owl.thumbnail_path.unlink()
    assert kinds(store.check()) == ["missing-source", "missing-thumbnail"]
    assert_repaired(store)
    assert store.get("owl").image_path is None and owl.thumbnail_path.exists()


def test_sources_without_a_plain_extension_are_still_recognised(tmp_path):
    store = ConceptStore(tmp_path / "home")
    picture = make_picture(tmp_path / "photo.png", 1)
    odd = tmp_path / "photo"  # no extension at all
    odd.write_bytes(picture.read_bytes())
    record = store.add(random_concept(1), image_path=odd)
    assert record.image_path.name.endswith(".image.img") and store.check().ok


def test_unreadable_index_is_rebuilt_from_the_files(store):
    from elite_cli.errors import LibraryError

    before = {r.id: (r.name, r.tags) for r in store.list()}
    store.close()
    for suffix in ("-wal", "-shm"):
        (store.home / f"library.db{suffix}").unlink(missing_ok=True)
    (store.home / "library.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(LibraryError, match=r"is damaged.*run `elite check --repair` to rebuild it"):
        ConceptStore(store.home)
    rebuilt, report = ConceptStore.rebuild_index(store.home)
    assert report.after.ok and {r.id: (r.name, r.tags) for r in rebuilt.list()} == before
    assert len(list(store.home.glob("library.db.broken-*"))) == 1
    assert "library.db.broken-" in report.actions[0]
