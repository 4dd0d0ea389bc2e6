"""Schema of library.db, only ever changed by appending a migration here (never edit a released one).

`ConceptStore` applies pending migrations every time it opens the library. Append a new
migration's name to `store.SCHEMA_MIGRATIONS` as well: an up-to-date library is opened without
importing this module (a test checks the two lists agree). Raw SQL is used where
sqlite-utils' table API cannot say it (COLLATE NOCASE, WITHOUT ROWID, partial indexes).
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

library_migrations = Migrations("elite-library")


@library_migrations()
def m001_concepts(db: Database) -> None:
    # Why: the index of concepts. The self-describing files are the truth; this table makes
    # listing and lookup fast. Names are unique regardless of case because `<Cat>` and `<cat>`
    # in a prompt must not silently mean two different concepts.
    # Why a separate table for the models: a library holds thousands of concepts made by a
    # handful of mapper/model combinations; storing four 70-byte strings once per combination
    # instead of once per concept keeps a 100,000-concept index well under 100 MB.
    db.execute(
        """
        CREATE TABLE model_sets (
            id INTEGER PRIMARY KEY,
            global_mapper TEXT NOT NULL,          -- "sha256:<hex>" fingerprint of the mapper weights
            local_mapper TEXT NOT NULL,
            base_model TEXT NOT NULL,             -- id or folder the concept was encoded for
            image_encoder TEXT NOT NULL,
            UNIQUE (global_mapper, local_mapper, base_model, image_encoder)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE concepts (
            id TEXT PRIMARY KEY,                  -- "sha256:<hex>" over the tensors (FORMAT.md)
            name TEXT NOT NULL COLLATE NOCASE UNIQUE,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            file_sha256 TEXT NOT NULL,            -- hash of the whole file; check compares it
            text_width INTEGER NOT NULL,
            grid INTEGER NOT NULL,
            model_set INTEGER NOT NULL REFERENCES model_sets(id),
            image_sha256 TEXT NOT NULL,
            mask_sha256 TEXT NOT NULL,            -- "" when the concept was encoded without a mask
            image_suffix TEXT,                    -- ".png" etc. of the kept source image; NULL if not kept
            mask_suffix TEXT                      -- same for the mask; NULL when none was given or kept
        )
        """
    )
    # Why: tags are many-to-many and filtering by tag must not scan every concept.
    db.execute(
        """
        CREATE TABLE concept_tags (
            tag TEXT NOT NULL COLLATE NOCASE,
            concept_id TEXT NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            PRIMARY KEY (tag, concept_id)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX concept_tags_by_concept ON concept_tags (concept_id)")


@library_migrations()
def m002_generation_history(db: Database) -> None:
    # Why: users want to find and repeat past work; one row per generated image, because
    # (prompt, seed, index) and the parameters fix an image and each image has its own file.
    db.execute(
        """
        CREATE TABLE generations (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,                 -- groups the images of one `elite gen` call
            created TEXT NOT NULL,
            prompt TEXT NOT NULL,
            negative_prompt TEXT NOT NULL,
            seed INTEGER NOT NULL,
            image_index INTEGER NOT NULL,
            parameters TEXT NOT NULL,             -- JSON object: every other generation setting
            concept_ids TEXT NOT NULL,            -- JSON object {name used in the prompt: concept id}
            output_path TEXT,
            duration_s REAL
        )
        """
    )
    db.execute("CREATE INDEX generations_by_run ON generations (run_id, image_index)")
    db.execute("CREATE INDEX generations_by_created ON generations (created)")


@library_migrations()
def m003_dedup_and_recent_indexes(db: Database) -> None:
    # Why: `add` looks for an existing concept from the same image, mask and mappers before
    # storing a new one, and `list --sort recent` orders by creation time; both must stay fast
    # at 100,000 concepts. Only image_sha256 is indexed: it is nearly unique on its own and a
    # four-column index would add ~30% to the index file.
    db.execute("CREATE INDEX concepts_by_image ON concepts (image_sha256)")
    db.execute("CREATE INDEX concepts_by_created ON concepts (created)")


@library_migrations()
def m004_preprocessing(db: Database) -> None:
    # Why: elite 0.2 stopped cropping square pictures (they are now prepared exactly as the
    # reference prepares them), so concepts made before differ from what `add` makes now.
    # `elite list` marks them stale from these columns alone, without opening every file, and
    # `reencode` repeats each concept's crop choice. Rows from before are preprocessing 1,
    # whose only crop was the square around the object (crop '' = not recorded).
    db.execute("ALTER TABLE concepts ADD COLUMN preprocessing INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE concepts ADD COLUMN crop TEXT NOT NULL DEFAULT ''")


MIGRATION_NAMES = [migration.name for migration in library_migrations._migrations]
