"""Schema migrations: a blank library, and an upgrade from every earlier schema with data in it."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from elite_cli.library import ConceptStore
from elite_cli.library.migrations import MIGRATION_NAMES, library_migrations

EXPECTED_TABLES = {"concepts", "concept_tags", "model_sets", "generations", "_sqlite_migrations"}
EXPECTED_INDEXES = {"concepts_by_image", "concepts_by_created", "concept_tags_by_concept", "generations_by_run",
                    "generations_by_created"}


def _schema(db):
    tables = set(db.table_names())
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    return tables, indexes


def test_the_fast_open_path_knows_every_migration():
    # ConceptStore skips importing sqlite-utils when SCHEMA_MIGRATIONS are all applied; a
    # migration missing from that list would never be applied to existing libraries.
    from elite_cli.library.store import MIGRATION_SET, SCHEMA_MIGRATIONS

    assert list(SCHEMA_MIGRATIONS) == MIGRATION_NAMES and MIGRATION_SET == library_migrations.name


def test_blank_library_gets_every_migration(tmp_path):
    store = ConceptStore(tmp_path)
    tables, indexes = _schema(store.db)
    assert EXPECTED_TABLES <= tables and EXPECTED_INDEXES <= indexes
    assert [m.name for m in library_migrations.applied(store.db)] == MIGRATION_NAMES
    store.close()
    again = ConceptStore(tmp_path)  # reopening applies nothing twice
    assert [m.name for m in library_migrations.applied(again.db)] == MIGRATION_NAMES


def _seed_old_schema(db):
    """Put one row in every table the old schema has, written the way that schema allowed."""
    tables = set(db.table_names())
    if "concepts" in tables:
        db.execute("INSERT INTO model_sets (id, global_mapper, local_mapper, base_model, image_encoder) "
                   "VALUES (1, 'sha256:g', 'sha256:l', 'base', 'enc')")
        db.execute("INSERT INTO concepts (id, name, created, updated, file_sha256, text_width, grid, model_set, "
                   "image_sha256, mask_sha256) VALUES ('sha256:" + "ab" * 32 + "', 'OldCat', '2025-01-01T00:00:00Z', "
                   "'2025-01-01T00:00:00Z', 'sha256:f', 768, 16, 1, 'sha256:i', '')")
        db.execute("INSERT INTO concept_tags (tag, concept_id) VALUES ('pet', 'sha256:" + "ab" * 32 + "')")
    if "generations" in tables:
        db.execute("INSERT INTO generations (run_id, created, prompt, negative_prompt, seed, image_index, parameters, "
                   "concept_ids) VALUES ('run1', '2025-01-01T00:00:00Z', '<OldCat> swims', '', 3, 0, '{}', '{}')")
    db.conn.commit()


@pytest.mark.parametrize("stop_before", MIGRATION_NAMES)
def test_upgrade_from_every_earlier_schema(tmp_path, stop_before):
    old = Database(sqlite3.connect(tmp_path / "library.db"))
    library_migrations.apply(old, stop_before=stop_before)
    applied_before = [m.name for m in library_migrations.applied(old)]
    assert applied_before == MIGRATION_NAMES[: MIGRATION_NAMES.index(stop_before)]
    _seed_old_schema(old)
    old.close()

    store = ConceptStore(tmp_path)
    tables, indexes = _schema(store.db)
    assert EXPECTED_TABLES <= tables and EXPECTED_INDEXES <= indexes
    assert [m.name for m in library_migrations.applied(store.db)] == MIGRATION_NAMES
    if "m001_concepts" in applied_before:
        record = store.get("oldcat")
        assert record.tags == ("pet",) and record.text_width == 768 and record.global_mapper == "sha256:g"
        # Concepts indexed before m004 were made by the old preprocessing (square pictures cropped).
        assert (record.preprocessing, record.crop, record.preprocessing_is_current()) == (1, "", False)
    if "m002_generation_history" in applied_before:
        assert [e.prompt for e in store.list_history()] == ["<OldCat> swims"]
