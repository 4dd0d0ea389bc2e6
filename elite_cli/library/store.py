"""ConceptStore: the concept library on disk (library.db index + self-describing concept files).

Layout and the crash-safety protocol are specified in library/FORMAT.md. In short:
- every file is written to a temp name beside its final name, fsynced, then renamed;
- a concept's sources and thumbnail are renamed into place before its concept file, and the
  concept file before its index row is committed, so an interrupted add leaves only files
  that `check` recognises and `repair` either indexes (a complete concept file) or deletes;
- a removal first renames the concept file to `<hex>.safetensors.removed` inside the open
  write transaction, so an interrupted removal is either undone (row still there) or
  finished (row gone) by `repair`.
Write transactions start with BEGIN IMMEDIATE: writers queue on the busy timeout instead of
failing with "database is locked" when a read transaction tries to upgrade.
The core never prints; every problem is a typed EliteError.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from elite_cli.errors import ConceptNotFound, FormatError, IndexUnreadable, InputError, LibraryError, NameClash
from elite_cli.library import conceptfile as cf
from elite_cli.library.history import GenerationHistory
from elite_cli.library.names import closest_names, name_from_stem, validate_name, validate_tag
from elite_cli.library.thumbnails import thumbnail_png
from elite_cli.library.records import CheckReport, ExportResult, RepairReport, StoredConcept
from elite_cli.common.paths import default_home

if TYPE_CHECKING:
    from sqlite_utils import Database

    from elite_cli.model.concept import Concept

DB_NAME = "library.db"
CONCEPTS_DIR = "concepts"
KEPT_SOURCES_DIR = "kept-sources"
PREVIEW_SUFFIX = ".preview.png"
BUSY_TIMEOUT_S = 60.0
# Shorter hex strings are too likely to be meant as names (and to match many ids).
MIN_ID_PREFIX = 4
AMBIGUOUS_SHOWN = 5  # matches named in an "ambiguous id prefix" error
# The names of elite_cli.library.migrations, repeated here so that opening a library whose
# schema is current (every `elite list`) needs only the standard library's sqlite3: importing
# sqlite-utils, which imports numpy, was a third of `elite list`'s wall time. A test keeps the
# two lists equal; a new migration is appended to both.
SCHEMA_MIGRATIONS = ("m001_concepts", "m002_generation_history", "m003_dedup_and_recent_indexes",
                     "m004_preprocessing")
MIGRATION_SET = "elite-library"

_CONCEPT_COLUMNS = """c.id, c.name, c.created, c.updated, c.file_sha256, c.text_width, c.grid, c.image_sha256,
    c.mask_sha256, c.image_suffix, c.mask_suffix, m.global_mapper, m.local_mapper, m.base_model, m.image_encoder,
    c.preprocessing, c.crop"""
_CONCEPT_FROM = "concepts c JOIN model_sets m ON m.id = c.model_set"


class ConceptEncoder(Protocol):
    """What `reencode` needs: elite_cli.model.encoder.Encoder fits."""

    def encode(self, image, mask=None, crop: str = "auto") -> "Concept": ...


class ConceptStore(GenerationHistory):
    """The concept library in `home` (default: `default_home()`), created and migrated on open.

    Safe to use from several processes at once. Not thread-safe: use one store per thread.
    """

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.concepts_dir = self.home / CONCEPTS_DIR
        try:
            self.concepts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LibraryError(f"cannot create the library folder '{self.home}' ({error.strerror}); "
                               "set ELITE_HOME to a writable folder.") from None
        self.db_path = self.home / DB_NAME
        self.conn = self._open_database()
        self._database: "Database | None" = None
        # (path, bytes) to write back if the open edit transaction fails after a file rewrite.
        self._undo_bytes: tuple[Path, bytes] | None = None

    # --- opening ---------------------------------------------------------------------------------

    @property
    def db(self) -> "Database":
        """The index as a sqlite-utils Database (same connection), for migrations and tools."""
        if self._database is None:
            from sqlite_utils import Database

            self._database = Database(self.conn)
        return self._database

    def _open_database(self) -> sqlite3.Connection:
        # Switching a new file to WAL and the first migration take locks for which SQLite may
        # answer "database is locked" at once instead of waiting out the busy timeout (seen with
        # 8 processes opening a new library together), so opening retries for that long.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.01
        while True:
            try:
                return self._try_open_database()
            except sqlite3.OperationalError as error:
                locked = "locked" in str(error) or "busy" in str(error)
                if locked and time.monotonic() < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.25)
                    continue
                if locked:
                    raise LibraryError(f"the library index '{self.db_path}' stayed locked for {BUSY_TIMEOUT_S:.0f} s; "
                                       "close other elite processes and try again.") from None
                raise self._unreadable(error) from None
            except sqlite3.DatabaseError as error:
                raise self._unreadable(error) from None

    def _unreadable(self, error: sqlite3.DatabaseError) -> IndexUnreadable:
        return IndexUnreadable(f"the library index '{self.db_path}' is damaged ({error}); run `elite check --repair` "
                               "to rebuild it from the concept files.")

    def _try_open_database(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                # WAL lets readers (list, get) run while another process writes.
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if not _schema_is_current(conn):
                from sqlite_utils import Database

                from elite_cli.library.migrations import library_migrations

                db = Database(conn)
                if library_migrations.pending(db):
                    # One writer migrates at a time; the others wait, then find nothing pending.
                    with _immediate(conn):
                        library_migrations.apply(db)
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def rebuild_index(cls, home: Path | str | None = None) -> tuple["ConceptStore", RepairReport]:
        """Recover from an unreadable library.db: move it aside, start a fresh index, and
        index every concept file (names and tags come from the files). The generation
        history lives only in the index: the rows the old file still gives are copied over,
        and the report says what could not be (the old file stays as `library.db.broken-<time>`).
        """
        home = Path(home).expanduser() if home is not None else default_home()
        stamp = cf.utc_now().replace(":", "").replace(".", "")
        moved = []
        for suffix in ("", "-wal", "-shm"):
            old = home / f"{DB_NAME}{suffix}"
            if old.exists():
                os.replace(old, home / f"{DB_NAME}.broken-{stamp}{suffix}")
                moved.append(f"{DB_NAME}.broken-{stamp}{suffix}")
        store = cls(home)
        report = store.repair()
        if moved:
            copied, complete = store.copy_history_from(home / moved[0])
            images = f"{copied} image{'' if copied == 1 else 's'}"
            if complete:
                history = f"; the generation history ({images}) was copied into it" if copied else ""
            elif copied:
                history = (f"; only part of the generation history could be read from the damaged index: "
                           f"{images} copied, the rest is lost")
            else:
                history = "; the generation history could not be read from the damaged index and is lost"
            report.actions.insert(0, f"kept the damaged index as {', '.join(moved)} and built a new one from the "
                                     f"concept files{history}")
        return store, report

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ConceptStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- paths -----------------------------------------------------------------------------------

    def _file_path(self, concept_id: str) -> Path:
        return self.concepts_dir / f"{cf.hex_of(concept_id)}.safetensors"

    def _thumbnail_path(self, concept_id: str) -> Path:
        return self.concepts_dir / f"{cf.hex_of(concept_id)}.thumb.png"

    def _preview_path(self, concept_id: str) -> Path:
        return self.concepts_dir / f"{cf.hex_of(concept_id)}{PREVIEW_SUFFIX}"

    def _source_path(self, concept_id: str, role: str, suffix: str | None) -> Path | None:
        return self.concepts_dir / f"{cf.hex_of(concept_id)}.{role}{suffix}" if suffix is not None else None

    # --- reading ---------------------------------------------------------------------------------

    def _record(self, row: sqlite3.Row | tuple, tags: tuple[str, ...], duplicate: bool = False) -> StoredConcept:
        (concept_id, name, created, updated, file_sha, width, grid, image_sha, mask_sha, image_suffix, mask_suffix,
         global_mapper, local_mapper, base_model, image_encoder, preprocessing, crop) = row
        return StoredConcept(
            id=concept_id, name=name, created=created, updated=updated, file_sha256=file_sha, text_width=width,
            grid=grid, global_mapper=global_mapper, local_mapper=local_mapper, base_model=base_model,
            image_encoder=image_encoder, image_sha256=image_sha, mask_sha256=mask_sha, tags=tags,
            file_path=self._file_path(concept_id), image_path=self._source_path(concept_id, "image", image_suffix),
            mask_path=self._source_path(concept_id, "mask", mask_suffix),
            thumbnail_path=self._thumbnail_path(concept_id), duplicate=duplicate, preprocessing=int(preprocessing),
            crop=crop)

    def _tags_of(self, ids: list[str]) -> dict[str, tuple[str, ...]]:
        tags: dict[str, list[str]] = {concept_id: [] for concept_id in ids}
        if ids:
            marks = ",".join("?" * len(ids))
            rows = self.conn.execute(f"SELECT concept_id, tag FROM concept_tags WHERE concept_id IN ({marks})", ids)
            for concept_id, tag in rows:
                tags[concept_id].append(tag)
        return {concept_id: tuple(sorted(values, key=str.lower)) for concept_id, values in tags.items()}

    def _records(self, rows: list) -> list[StoredConcept]:
        tags = self._tags_of([row[0] for row in rows])
        return [self._record(row, tags[row[0]]) for row in rows]

    def _find(self, where: str, params: list) -> list:
        return self.conn.execute(f"SELECT {_CONCEPT_COLUMNS} FROM {_CONCEPT_FROM} WHERE {where}", params).fetchall()

    def get(self, name_or_id: str) -> StoredConcept:
        """The concept with this name (any case), else the one whose id starts with this prefix.

        An id prefix may omit "sha256:" and needs MIN_ID_PREFIX+ hex digits. Raises
        ConceptNotFound (with close names suggested) or LibraryError listing the matches when a
        prefix is ambiguous.
        """
        rows = self._find("c.name = ?", [name_or_id])
        prefix = name_or_id.lower().removeprefix("sha256:")
        is_hex = bool(prefix) and all(ch in "0123456789abcdef" for ch in prefix)
        if not rows and is_hex and len(prefix) >= MIN_ID_PREFIX:
            low = "sha256:" + prefix
            rows = self._find(f"c.id >= ? AND c.id < ? ORDER BY c.id LIMIT {AMBIGUOUS_SHOWN + 1}", [low, low + "g"])
            if len(rows) > 1:
                shown = ", ".join(f"{record.short_id} <{record.name}>" for record in self._records(rows[:AMBIGUOUS_SHOWN]))
                more = ", ..." if len(rows) > AMBIGUOUS_SHOWN else ""
                raise LibraryError(f"id prefix '{name_or_id}' is ambiguous: it matches {shown}{more}; give more hex "
                                   "digits, or the concept's name.")
        if not rows:
            hint = self.suggestions(name_or_id)
            did_you_mean = f" (did you mean {', '.join(repr(n) for n in hint)}?)" if hint else ""
            if is_hex and len(prefix) >= MIN_ID_PREFIX:
                what = f"no concept named '{name_or_id}' or with an id starting with it"
            elif is_hex:
                what = f"no concept named '{name_or_id}' (an id prefix needs at least {MIN_ID_PREFIX} hex digits)"
            else:
                what = f"no concept named '{name_or_id}'"
            raise ConceptNotFound(f"{what} in the library{did_you_mean}; give a name or an id prefix of at least "
                                  f"{MIN_ID_PREFIX} hex digits, as `elite list` shows them.")
        return self._records(rows)[0]

    def mask_origin(self, record: StoredConcept) -> dict[str, str]:
        """Where a concept's object mask came from: its file's mask_source, mask_model and
        mask_object ("" when not recorded, or when the file cannot be read; `check` reports that)."""
        try:
            metadata = cf.read_metadata(record.file_path)
            origin = {key: metadata.get(key, "") for key in cf.MASK_KEYS}
        except (OSError, FormatError):
            origin = {key: "" for key in cf.MASK_KEYS}
        if not origin["mask_source"]:
            # Not recorded (a concept from before elite recorded it): the stored sources tell.
            origin["mask_source"] = self._mask_source_from_sources(record)
        return origin

    @staticmethod
    def _mask_source_from_sources(record: StoredConcept) -> str:
        """"file", "alpha" (no mask file, a picture with transparency) or "none"; "" when no
        stored picture tells."""
        if record.mask_sha256:
            return "file"
        if record.image_path is None or not record.image_path.is_file():
            return ""
        from elite_cli.errors import EliteError
        from elite_cli.model.images import alpha_marks_object

        try:
            return "alpha" if alpha_marks_object(record.image_path) else "none"
        except EliteError:  # a stored picture that no longer decodes: `check` reports it
            return ""

    def exists(self, name: str) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM concepts WHERE name = ?", [name]).fetchone())

    def load(self, name_or_id: str) -> "Concept":
        """The stored concept as tensors (float32), validated on the way in; `name` is set."""
        record = self.get(name_or_id)
        concept = cf.load_path(record.file_path).to_concept()
        concept.name = record.name
        return concept

    def list(self, tag: str | None = None, pattern: str | None = None, limit: int | None = None, offset: int = 0,
             sort: str = "name") -> list[StoredConcept]:
        """Concepts filtered by tag and by a name glob (`cat*`; no wildcard means "contains"), any case.

        sort: "name" (A-Z) or "recent" (newest first). limit/offset page through large libraries.
        """
        where, params = self._filters(tag, pattern, self._tag_is_common(tag))
        order = {"name": "c.name", "recent": "c.created DESC, c.id"}.get(sort)
        if order is None:
            raise InputError(f"sort order '{sort}' is not known; use 'name' or 'recent'.")
        if limit is not None and limit < 0 or offset < 0:
            raise InputError("limit and offset must be 0 or more.")
        sql = f"SELECT {_CONCEPT_COLUMNS} FROM {_CONCEPT_FROM} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        rows = self.conn.execute(sql, [*params, -1 if limit is None else limit, offset]).fetchall()
        return self._records(rows)

    def count(self, tag: str | None = None, pattern: str | None = None) -> int:
        where, params = self._filters(tag, pattern)
        return self.conn.execute(f"SELECT count(*) FROM concepts c WHERE {where}", params).fetchone()[0]

    def _tag_is_common(self, tag: str | None) -> bool:
        """Whether a tag is on so many concepts that scanning in list order finds a page sooner.

        Fetching every tagged concept and sorting costs ~ n lookups; walking the name (or
        created) index and testing each concept costs ~ page * total / n. They cross near
        n = sqrt(20 * total) on a 2-core machine (benchmarks/library_bench.py).
        """
        if tag is None:
            return False
        tagged = self.conn.execute("SELECT count(*) FROM concept_tags WHERE tag = ?", [tag]).fetchone()[0]
        total = self.conn.execute("SELECT max(rowid) FROM concepts").fetchone()[0] or 0  # cheap stand-in for count
        return tagged * tagged > 20 * total

    @staticmethod
    def _filters(tag: str | None, pattern: str | None, common_tag: bool = False) -> tuple[str, list]:
        clauses, params = ["1"], []
        if tag is not None:
            if common_tag:
                clauses.append("EXISTS (SELECT 1 FROM concept_tags t WHERE t.tag = ? AND t.concept_id = c.id)")
            else:
                clauses.append("c.id IN (SELECT concept_id FROM concept_tags WHERE tag = ?)")
            params.append(tag)
        if pattern:
            like = _like_escape(pattern).replace("*", "%").replace("?", "_")
            if "*" not in pattern and "?" not in pattern:
                like = f"%{like}%"
            clauses.append("c.name LIKE ? ESCAPE '\\'")
            params.append(like)
        return " AND ".join(clauses), params

    def names(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT name FROM concepts ORDER BY name")]

    def suggestions(self, name: str, limit: int = 3) -> list[str]:
        """Stored names closest to `name` (difflib), for "unknown concept" messages."""
        if not name:
            return []
        # difflib is O(n) per candidate; in huge libraries compare against names sharing the
        # first letter only, which is where a typo almost always still is.
        if self.count() > 5000:
            candidates = [row[0] for row in self.conn.execute(
                "SELECT name FROM concepts WHERE name LIKE ? ESCAPE '\\' LIMIT 20000",
                [_like_escape(name[0]) + "%"])]
        else:
            candidates = self.names()
        return closest_names(name, candidates, limit)

    def find_duplicate(self, image_sha256: str, mask_sha256: str, global_mapper: str, local_mapper: str,
                       preprocessing: int | str | None = None, crop: str | None = None) -> StoredConcept | None:
        """The stored concept made from the same image, mask and mapper weights (and, when given,
        the same preprocessing version and crop), if any.

        The CLI can call this before encoding to skip the work; `add` calls it too.
        """
        where = "c.image_sha256 = ? AND c.mask_sha256 = ? AND m.global_mapper = ? AND m.local_mapper = ?"
        params: list = [image_sha256, mask_sha256, global_mapper, local_mapper]
        if preprocessing is not None:
            where += " AND c.preprocessing = ? AND c.crop = ?"
            params += [int(preprocessing), crop or ""]
        rows = self._find(where, params)
        return self._records(rows[:1])[0] if rows else None

    # --- writing helpers -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[None]:
        with _immediate(self.conn):
            yield

    def _model_set_id(self, provenance: dict[str, str]) -> int:
        values = [provenance.get(key, "") for key in ("global_mapper", "local_mapper", "base_model", "image_encoder")]
        self.conn.execute("INSERT OR IGNORE INTO model_sets (global_mapper, local_mapper, base_model, image_encoder) "
                        "VALUES (?, ?, ?, ?)", values)
        return self.conn.execute("SELECT id FROM model_sets WHERE global_mapper = ? AND local_mapper = ? AND "
                               "base_model = ? AND image_encoder = ?", values).fetchone()[0]

    def _insert_row(self, metadata: dict[str, str], file_sha256: str, image_suffix: str | None,
                    mask_suffix: str | None, updated: str) -> None:
        """Insert the index row (and tags) of a concept file whose files are already in place."""
        concept_id = metadata["concept_id"]
        provenance = cf.provenance_of(metadata)
        self.conn.execute(
            "INSERT INTO concepts (id, name, created, updated, file_sha256, text_width, grid, model_set, image_sha256,"
            " mask_sha256, image_suffix, mask_suffix, preprocessing, crop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [concept_id, metadata["name"], metadata["created"], updated, file_sha256, int(metadata["text_width"]),
             int(metadata["grid"]), self._model_set_id(metadata), metadata["image_sha256"], metadata["mask_sha256"],
             image_suffix, mask_suffix, _preprocessing_number(provenance["preprocessing"]), provenance["crop"]])
        tags = json.loads(metadata.get("tags", "[]"))
        self.conn.executemany("INSERT OR IGNORE INTO concept_tags (tag, concept_id) VALUES (?, ?)",
                                 [(tag, concept_id) for tag in tags])

    def _retire(self, record: StoredConcept) -> Path:
        """Inside a write transaction: delete the row and rename the file to `.removed`."""
        self.conn.execute("DELETE FROM concept_tags WHERE concept_id = ?", [record.id])
        self.conn.execute("DELETE FROM concepts WHERE id = ?", [record.id])
        retired = record.file_path.with_name(record.file_path.name + cf.REMOVED_SUFFIX)
        os.replace(record.file_path, retired)
        return retired

    def _discard(self, record: StoredConcept, retired: Path, keep_sources: bool = False) -> list[Path]:
        """After commit: delete a retired concept's files; return where kept sources went."""
        kept = []
        for role, path in (("image", record.image_path), ("mask", record.mask_path)):
            if path is None or not path.exists():
                continue
            if keep_sources:
                target_dir = self.home / KEPT_SOURCES_DIR
                target_dir.mkdir(exist_ok=True)
                target = target_dir / f"{record.name}-{record.short_id}.{role}{path.suffix}"
                os.replace(path, target)
                kept.append(target)
            else:
                path.unlink(missing_ok=True)
        record.thumbnail_path.unlink(missing_ok=True)
        record.preview_path.unlink(missing_ok=True)
        retired.unlink(missing_ok=True)
        return kept

    # --- add -------------------------------------------------------------------------------------

    def add(self, concept: "Concept", *, image_path: Path | str, mask_path: Path | str | None = None,
            name: str | None = None, tags: tuple[str, ...] | list[str] = (), replace: bool = False,
            keep_sources: bool = True) -> StoredConcept:
        """Store an encoded concept with copies of its source image and mask, a thumbnail, and, when
        its object is marked (a mask file, the picture's transparency or an automatic mask: the
        provenance's mask_source), a preview of the object on the picture (`<hex>.preview.png`).

        name defaults to the image file stem made valid. If the same image + mask + mappers (or
        the very same tensors) are already stored, the existing record is returned with
        duplicate=True and nothing is written. A name in use raises NameClash unless replace.
        Atomic: after an exception or a crash nothing half-added remains visible.
        """
        image_path = Path(image_path)
        mask_path = Path(mask_path) if mask_path is not None else None
        for path, what in ((image_path, "image"), (mask_path, "mask")):
            if path is not None and not path.is_file():
                raise InputError(f"{what} file '{path}' does not exist; pass the picture the concept was encoded from.")
        name = validate_name(name) if name is not None else name_from_stem(image_path.stem)
        tags = sorted({validate_tag(tag) for tag in tags}, key=str.lower)
        image_sha = cf.sha256_file(image_path)
        mask_sha = cf.sha256_file(mask_path) if mask_path is not None else ""
        for key, actual in (("image_sha256", image_sha), ("mask_sha256", mask_sha)):
            claimed = concept.provenance.get(key)
            if claimed and claimed != actual:
                raise InputError(f"the {key.split('_')[0]} file does not match the one the concept was encoded from "
                                 f"({key} {claimed[:19]}..); pass the same files to add.")
        provenance = {**concept.provenance, "image_sha256": image_sha, "mask_sha256": mask_sha}
        for key in ("global_mapper", "local_mapper"):
            if not provenance.get(key):
                raise InputError(f"the concept has no {key} fingerprint; encode it with elite's Encoder, which records it.")
        tensors = cf.disk_tensors(concept)
        metadata = cf.concept_metadata(concept, tensors, name=name, created=cf.utc_now(), tags=tags)
        metadata.update(cf.recorded_keys(provenance))
        data = cf.serialize(tensors, metadata)
        cf.load_bytes(data, name)  # the same checks an import gets: shapes, finite values
        thumbnail = thumbnail_png(image_path)
        preview = None
        if provenance.get("mask_source") in ("file", "painted", "alpha", "auto"):
            from elite_cli.library.thumbnails import preview_png

            preview = preview_png(image_path, mask_path, provenance.get("crop") or "auto")
        sources = [("image", image_path, _source_suffix(image_path))]
        if mask_path is not None:
            sources.append(("mask", mask_path, _source_suffix(mask_path)))
        if not keep_sources:
            sources = []
        return self._store(data, metadata, thumbnail, sources, replace, preview)

    def _store(self, data: bytes, metadata: dict[str, str], thumbnail: bytes,
               sources: list[tuple[str, Path, str]], replace: bool, preview: bytes | None = None) -> StoredConcept:
        concept_id, name = metadata["concept_id"], metadata["name"]
        final_file = self._file_path(concept_id)
        placed: list[Path] = []
        temps: list[Path] = []
        retired: tuple[StoredConcept, Path] | None = None
        try:
            with self._write():
                # The very same tensors are never stored twice. The same sources and mappers
                # are not either, except when replacing that concept under its own name
                # (re-encoding with non-deterministic kernels gives slightly different tensors).
                same_tensors = self._find("c.id = ?", [concept_id])
                if same_tensors and replace and same_tensors[0][1].lower() == name.lower():
                    # Re-encoding gave the very tensors stored: only the record of how they were
                    # made (models, preprocessing) may be news, and it must be kept, or the concept
                    # would stay stale however often it is re-encoded.
                    record = self._records(same_tensors)[0]
                    self._update_provenance(record, metadata)
                    return self._record(self._find("c.id = ?", [concept_id])[0], record.tags, duplicate=True)
                provenance = cf.provenance_of(metadata)
                same_sources = same_tensors or self._find(
                    "c.image_sha256 = ? AND c.mask_sha256 = ? AND m.global_mapper = ? AND m.local_mapper = ?"
                    " AND c.preprocessing = ? AND c.crop = ?",
                    [metadata["image_sha256"], metadata["mask_sha256"], metadata["global_mapper"],
                     metadata["local_mapper"], _preprocessing_number(provenance["preprocessing"]), provenance["crop"]])
                if same_tensors or (same_sources and not (replace and same_sources[0][1].lower() == name.lower())):
                    row = same_sources[0]
                    return self._record(row, self._tags_of([row[0]])[row[0]], duplicate=True)
                clash = self._find("c.name = ?", [name])
                if clash and not replace and (clash[0][7], clash[0][8]) == (metadata["image_sha256"],
                                                                           metadata["mask_sha256"]):
                    # The same picture, encoded before by other mappers or preprocessing (else it was a duplicate).
                    old = self._records(clash)[0]
                    if not old.mapper_matches(metadata["global_mapper"], metadata["local_mapper"]):
                        raise NameClash(f"concept '{old.name}' was made from this picture by other mapper weights; "
                                        f"run `elite reencode {old.name}` to encode it with the current ones.")
                    if old.preprocessing < _preprocessing_number(provenance["preprocessing"]):
                        raise NameClash(f"concept '{old.name}' was made from this picture by an older elite, which "
                                        f"cropped pictures differently; run `elite reencode {old.name}` to update it.")
                    raise NameClash(f"concept '{old.name}' was made from this picture with --crop "
                                    f"{old.crop or 'object'}; pass --replace to store it with --crop {provenance['crop']}, "
                                    "or choose another --name.")
                if clash and not replace:
                    raise NameClash(f"a concept named '{clash[0][1]}' already exists; choose another name or replace it.",
                                    taken=clash[0][1])
                # Sources and thumbnail first, the concept file last: a concept file on disk
                # always has its companions, so repair can index it as it stands.
                for role, source, suffix in sources:
                    temps.append(cf.write_temp(self._source_path(concept_id, role, suffix), source.read_bytes()))
                temps.append(cf.write_temp(self._thumbnail_path(concept_id), thumbnail))
                finals = [self._source_path(concept_id, role, suffix) for role, _, suffix in sources]
                finals.append(self._thumbnail_path(concept_id))
                if preview is not None:
                    temps.append(cf.write_temp(self._preview_path(concept_id), preview))
                    finals.append(self._preview_path(concept_id))
                temps.append(cf.write_temp(final_file, data))
                finals.append(final_file)
                for temp, final in zip(temps, finals):
                    os.replace(temp, final)
                    placed.append(final)
                cf.fsync_dir(self.concepts_dir)
                if clash:
                    old = self._records(clash)[0]
                    retired = (old, self._retire(old))
                suffix_of = {role: suffix for role, _, suffix in sources}
                self._insert_row(metadata, cf.sha256_bytes(data), suffix_of.get("image"), suffix_of.get("mask"),
                                 updated=cf.utc_now())
        except BaseException:
            for path in temps:
                path.unlink(missing_ok=True)
            for path in placed:
                path.unlink(missing_ok=True)
            if retired is not None and retired[1].exists():
                os.replace(retired[1], retired[0].file_path)
            raise
        if retired is not None:
            self._discard(*retired)
        return self.get(concept_id)

    def _update_provenance(self, record: StoredConcept, metadata: dict[str, str]) -> None:
        """Inside a write transaction: record in the file and the row that `record`'s tensors were
        (re)made by the models and preprocessing in `metadata` (its name and tags are kept)."""
        new = {key: metadata[key] for key in (*cf.PROVENANCE_KEYS, *cf.MASK_KEYS) if key in metadata}
        new["format_version"] = cf.FORMAT_VERSION  # the file now carries version 2's keys
        current = cf.read_metadata(record.file_path)
        if all(current.get(key) == value for key, value in new.items()):
            return
        provenance = cf.provenance_of(new)
        self.conn.execute("UPDATE concepts SET model_set = ?, preprocessing = ?, crop = ? WHERE id = ?",
                          [self._model_set_id(new), _preprocessing_number(provenance["preprocessing"]),
                           provenance["crop"], record.id])
        self._rewrite(record, **new)

    # --- edits -----------------------------------------------------------------------------------

    def _rewrite(self, record: StoredConcept, **metadata_changes: str) -> None:
        """Inside a write transaction: rewrite the concept file's metadata and the row's file hash.

        The file is replaced just before commit; if the commit then fails the old bytes are
        put back, and a crash in between leaves a file that `repair` re-indexes as it stands.
        """
        old_bytes = record.file_path.read_bytes()
        stored = cf.load_bytes(old_bytes, str(record.file_path))
        metadata = {**stored.metadata, **metadata_changes}
        data = cf.serialize({name: stored.tensors[name] for name in cf.CONCEPT_TENSORS}, metadata)
        now = cf.utc_now()
        self.conn.execute("UPDATE concepts SET name = ?, updated = ?, file_sha256 = ? WHERE id = ?",
                        [metadata["name"], now, cf.sha256_bytes(data), record.id])
        self.conn.execute("DELETE FROM concept_tags WHERE concept_id = ?", [record.id])
        self.conn.executemany("INSERT INTO concept_tags (tag, concept_id) VALUES (?, ?)",
                                 [(tag, record.id) for tag in json.loads(metadata["tags"])])
        self._undo_bytes = (record.file_path, old_bytes)
        cf.atomic_write(record.file_path, data)

    @contextmanager
    def _editing(self) -> Iterator[None]:
        self._undo_bytes = None
        try:
            with self._write():
                yield
        except BaseException:
            if self._undo_bytes is not None:
                cf.atomic_write(*self._undo_bytes)
            raise
        finally:
            self._undo_bytes = None

    def rename(self, name_or_id: str, new_name: str) -> StoredConcept:
        """Rename a concept (index and file metadata). Raises NameClash if the name is taken."""
        validate_name(new_name)
        with self._editing():
            record = self.get(name_or_id)
            clash = self._find("c.name = ?", [new_name])
            if clash and clash[0][0] != record.id:
                raise NameClash(f"a concept named '{clash[0][1]}' already exists; choose another name.")
            if record.name != new_name:  # renaming to the same name rewrites nothing
                self._rewrite(record, name=new_name)
        return self.get(record.id)

    def tag(self, name_or_id: str, *tags: str) -> StoredConcept:
        """Add tags (same rules as names; case-insensitive, duplicates ignored)."""
        return self._set_tags(name_or_id, add=[validate_tag(tag) for tag in tags], drop=[])

    def untag(self, name_or_id: str, *tags: str) -> StoredConcept:
        """Remove tags; tags the concept does not have are ignored."""
        return self._set_tags(name_or_id, add=[], drop=list(tags))

    def _set_tags(self, name_or_id: str, add: list[str], drop: list[str]) -> StoredConcept:
        with self._editing():
            record = self.get(name_or_id)
            current = {tag.lower(): tag for tag in record.tags}
            for tag in add:
                current.setdefault(tag.lower(), tag)
            for tag in drop:
                current.pop(tag.lower(), None)
            new_tags = sorted(current.values(), key=str.lower)
            if new_tags != list(record.tags):
                self._rewrite(record, tags=json.dumps(sorted(new_tags)))
        return self.get(record.id)

    def remove(self, name_or_id: str, keep_sources: bool = False) -> list[Path]:
        """Remove a concept's row and files together; with keep_sources its image and mask are
        moved to `<home>/kept-sources/` instead of deleted. Returns the kept paths."""
        retired = None
        try:
            with self._write():
                record = self.get(name_or_id)
                retired = self._retire(record)
        except BaseException:
            if retired is not None and retired.exists():
                os.replace(retired, record.file_path)
            raise
        return self._discard(record, retired, keep_sources)

    # --- re-encoding -----------------------------------------------------------------------------

    def reencode(self, name_or_id: str, encoder: ConceptEncoder, crop: str | None = None) -> StoredConcept:
        """Encode a concept again from its stored sources with `encoder` (the current mappers).

        Keeps the name, tags and sources, and the concept's crop choice unless `crop` is given
        (concepts from before crops were recorded get the default). Returns the record with
        duplicate=True when the encoding gave the tensors already stored (then only the record
        of the models and preprocessing that made them is brought up to date).

        The library never holds the same picture and mask encoded by the same mappers twice, so
        when the new encoding is another concept's (that picture was added again under another
        name with the current mappers), the two merge: this concept is removed, the other one
        keeps its name and gains this one's tags, and its record is returned (duplicate=True,
        another name), so the caller can say which name to use now.
        """
        from elite_cli.model.concept import DEFAULT_CROP

        record = self.get(name_or_id)
        self.require_sources([record])
        concept = encoder.encode(record.image_path, record.mask_path, crop=crop or record.crop or DEFAULT_CROP)
        # The encoder sees the stored mask as a mask file; where that file came from (an
        # automatic mask, say) is the concept's own record, and stays.
        before = cf.read_metadata(record.file_path)
        if before.get("mask_source"):
            concept.provenance.update({key: before.get(key, "") for key in cf.MASK_KEYS})
        stored = self.add(concept, image_path=record.image_path, mask_path=record.mask_path, name=record.name,
                          tags=record.tags, replace=True)
        if not stored.duplicate or stored.id == record.id:
            return stored
        retired = None
        try:
            with self._editing():
                survivor, stale = self.get(stored.id), self.get(record.id)
                tags = {tag.lower(): tag for tag in survivor.tags}
                for tag in stale.tags:
                    tags.setdefault(tag.lower(), tag)
                if len(tags) != len(survivor.tags):
                    self._rewrite(survivor, tags=json.dumps(sorted(tags.values())))
                retired = self._retire(stale)
        except BaseException:
            if retired is not None and retired.exists():
                os.replace(retired, record.file_path)
            raise
        self._discard(record, retired)
        return dataclasses.replace(self.get(stored.id), duplicate=True)

    @staticmethod
    def without_sources(records: list[StoredConcept]) -> list[StoredConcept]:
        """The records whose stored source picture is gone (imported concepts never had one)."""
        return [record for record in records if record.image_path is None or not record.image_path.exists()]

    def require_sources(self, records: list[StoredConcept]) -> None:
        """Raise LibraryError naming every record that cannot be re-encoded (no stored source picture)."""
        missing = self.without_sources(records)
        if len(missing) == 1:
            raise LibraryError(f"concept '{missing[0].name}' has no stored source image (imported concepts have none); "
                               "add it again from the picture.")
        if missing:
            names = ", ".join(f"'{record.name}'" for record in missing)
            raise LibraryError(f"concepts {names} have no stored source image (imported concepts have none); "
                               "add them again from the pictures.")

    # --- mapper provenance -----------------------------------------------------------------------

    def for_generation(self, names: list[str], global_fingerprint: str, local_fingerprint: str,
                       allow_mapper_mismatch: bool = False) -> dict[str, "Concept"]:
        """Load the concepts a prompt names, refusing any encoded by other mapper weights.

        Mixing a concept with mappers it was not made by gives wrong images without any error,
        so this raises LibraryError (naming the fix: re-encode) unless allow_mapper_mismatch.
        Returns {name as written in the prompt: Concept}.
        """
        concepts = {}
        for name in names:
            record = self.get(name)
            problem = mapper_mismatch(record, global_fingerprint, local_fingerprint)
            if problem and not allow_mapper_mismatch:
                raise LibraryError(problem)
            concept = cf.load_path(record.file_path).to_concept()
            concept.name = record.name
            concepts[name] = concept
        return concepts

    def stale(self, global_fingerprint: str, local_fingerprint: str) -> list[StoredConcept]:
        """Concepts encoded by other mapper weights than the given ones (candidates for reencode)."""
        rows = self._find("NOT (m.global_mapper = ? AND m.local_mapper = ?) ORDER BY c.name",
                          [global_fingerprint, local_fingerprint])
        return self._records(rows)

    # --- check and repair ------------------------------------------------------------------------

    def check(self, verify_hashes: bool = True) -> CheckReport:
        """Compare the index with the files. Problems found (FORMAT.md lists the kinds):
        missing-file, hash-mismatch, missing-source, missing-thumbnail, orphan-file,
        orphan-companion, temp-file, removed-file. verify_hashes=False skips reading every file.
        """
        from elite_cli.library.maintenance import check

        return check(self, verify_hashes)

    def repair(self) -> RepairReport:
        """Make the index and files agree again, trusting the self-describing concept files:
        valid unindexed files are indexed (renamed `<name>-2` etc. if the name is taken),
        rows without a valid file are dropped, leftovers deleted, invalid files quarantined.
        """
        from elite_cli.library.maintenance import repair

        return repair(self)

    # --- sharing ---------------------------------------------------------------------------------

    def export(self, name_or_id: str, path: Path | str, format: str = "elite", token: str | None = None,
               overwrite: bool = False) -> "ExportResult":
        """Write a concept for sharing: format "elite" (bundle, exact round trip), "diffusers" or
        "a1111" (primary word only; the result's note says that local detail does not travel)."""
        from elite_cli.library.sharing import export_concept

        return export_concept(self, name_or_id, Path(path), format, token, overwrite)

    def import_concept(self, path: Path | str, name: str | None = None, replace: bool = False) -> StoredConcept:
        """Import an exported elite bundle, validated fully before the library is touched."""
        from elite_cli.library.sharing import import_bundle

        return import_bundle(self, Path(path), name, replace)


def _source_suffix(path: Path) -> str:
    """The suffix a kept source gets: the original one lower-cased if it is a plain short
    extension (check recognises `<hex>.image.<ext>`), else `.img`."""
    suffix = path.suffix.lower()
    return suffix if 1 < len(suffix) <= 9 and suffix[1:].isascii() and suffix[1:].isalnum() else ".img"


def _preprocessing_number(value: str) -> int:
    """The preprocessing version of a concept file's metadata as a number (0 when unknown)."""
    return int(value) if value.isdigit() else 0


def _like_escape(text: str) -> str:
    """Make LIKE's wildcards literal (used with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def mapper_mismatch(record: StoredConcept, global_fingerprint: str, local_fingerprint: str) -> str | None:
    """A one-sentence explanation when `record` was encoded by other mapper weights, else None."""
    if record.mapper_matches(global_fingerprint, local_fingerprint):
        return None
    which = [label for label, stored, current in (("global", record.global_mapper, global_fingerprint),
                                                  ("local", record.local_mapper, local_fingerprint)) if stored != current]
    return (f"concept '{record.name}' was encoded with other {' and '.join(which)} mapper weights than the configured "
            f"ones; re-encode it (`elite reencode {record.name}`) or explicitly allow the mismatch.")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock up front (waits on busy_timeout)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def _schema_is_current(conn: sqlite3.Connection) -> bool:
    """Whether every migration of SCHEMA_MIGRATIONS is recorded (sqlite-utils' own table)."""
    try:
        applied = {row[0] for row in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = ?",
                                                  [MIGRATION_SET])}
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):  # a new library
            return False
        raise
    return applied.issuperset(SCHEMA_MIGRATIONS)
