"""What the library tells the user is true: where a concept's mask came from (`elite show`), what a
repair did with each file, and what became of the generation history when library.db is rebuilt."""

from __future__ import annotations

import gc
import json
import re
import sqlite3

import numpy as np
import pytest
from PIL import Image

from elite_cli.library import ConceptStore
from library_support import make_picture, random_concept


def test_show_says_where_the_mask_came_from(run_cli, elite_home, tmp_path):
    store = ConceptStore(elite_home)
    cutout = np.zeros((24, 24, 4), dtype=np.uint8)
    cutout[6:18, 6:18] = (200, 40, 40, 255)  # an opaque object on a transparent background
    Image.fromarray(cutout, "RGBA").save(tmp_path / "cutout.png")
    store.add(random_concept(1), image_path=tmp_path / "cutout.png")
    store.add(random_concept(2), image_path=make_picture(tmp_path / "plain.png", 2))
    mask = make_picture(tmp_path / "mask.png", 4)
    store.add(random_concept(3), image_path=make_picture(tmp_path / "masked.png", 3), mask_path=mask)
    store.close()
    # These concepts record no mask source (as concepts from before elite recorded it): the stored
    # sources tell.
    origins = {name: json.loads(run_cli("show", name, "--json").stdout)["mask_source"]
               for name in ("cutout", "plain", "masked")}
    assert origins == {"cutout": "alpha", "plain": "none", "masked": "file"}
    shown = run_cli("show", "cutout")
    assert shown.exit_code == 0
    assert re.search(r"^mask_source +the picture's transparency$", shown.stdout, re.M), shown.stdout


def test_repair_of_a_lost_concept_says_moved_for_every_file_it_moves(run_cli, elite_home, tmp_path):
    store = ConceptStore(elite_home)
    record = store.add(random_concept(1), image_path=make_picture(tmp_path / "cat.png", 1))
    store.close()
    record.file_path.unlink()
    result = run_cli("check", "--repair")
    assert result.exit_code == 0, result.output
    assert "deleted" not in result.stdout
    for kept in (record.image_path, record.thumbnail_path):
        assert f"moved {kept.name} to quarantine/" in result.stdout
        assert len(list((elite_home / "quarantine").glob(f"*/{kept.name}"))) == 1


def _zero_the_page_of(database, table: str) -> None:
    """Damage library.db where only `table` lives: the rest of the file stays readable."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()[0]
    connection.close()
    data = bytearray(database.read_bytes())
    data[(root - 1) * page_size: root * page_size] = bytes(page_size)
    database.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["concepts page", "whole file"])
def test_rebuilding_the_index_keeps_the_history_or_says_it_is_lost(run_cli, elite_home, tmp_path, damage):
    store = ConceptStore(elite_home)
    store.add(random_concept(1), image_path=make_picture(tmp_path / "cat.png", 1), name="mycat")
    for index in range(2):
        store.record_generation(run_id="run-a", prompt="<mycat> on the beach", negative_prompt="", seed=7 + index,
                                image_index=index, parameters={"steps": 2}, concept_ids={"mycat": "x"},
                                output_path=f"/out/{index}.png", duration_s=0.5)
    before = run_cli("history", "--json").stdout
    store.close()
    # The command's own connection closes when collected, and closing checkpoints the WAL into
    # library.db: it must happen before the damage, not undo it afterwards.
    gc.collect()
    database = elite_home / "library.db"
    if damage == "concepts page":
        _zero_the_page_of(database, "concepts")
    else:
        for suffix in ("-wal", "-shm"):
            (elite_home / f"library.db{suffix}").unlink(missing_ok=True)
        database.write_bytes(b"not a database at all " * 200)
    repaired = run_cli("check", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert [row["name"] for row in json.loads(run_cli("list", "--json").stdout)] == ["mycat"]
    history = run_cli("history", "--json").stdout
    if damage == "concepts page":
        assert "the generation history (2 images) was copied into it" in repaired.stdout, repaired.stdout
        assert json.loads(history) == json.loads(before)
    else:
        assert "the generation history could not be read from the damaged index and is lost" in repaired.stdout
        assert json.loads(history) == []


def test_list_says_why_staleness_is_not_known_yet(run_cli, elite_home, tmp_path):
    # A library filled without any model command (an import): the mappers' fingerprints are unknown.
    from elite_cli.model.concept import PREPROCESSING_VERSION

    concept = random_concept(1)
    concept.provenance.update(preprocessing=str(PREPROCESSING_VERSION), crop="auto")  # current: only mappers may tell
    store = ConceptStore(elite_home)
    store.add(concept, image_path=make_picture(tmp_path / "cat.png", 1))
    store.close()
    result = run_cli("list")
    assert result.exit_code == 0
    [row] = [line for line in result.stdout.splitlines() if line.strip().startswith("cat ")]
    assert row.rstrip().endswith("?")
    assert "stale '?': not known yet" in result.stderr and "`elite add`, `gen`, `reencode`" in result.stderr
