"""Generation history: one row per generated image, so users can find and repeat past work."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from elite_cli.errors import InputError, LibraryError
from elite_cli.library import conceptfile as cf
from elite_cli.library.records import HistoryEntry

if TYPE_CHECKING:
    import sqlite3


class GenerationHistory:
    """The `generations` table of library.db; mixed into ConceptStore (which provides conn, _write)."""

    conn: "sqlite3.Connection"

    @staticmethod
    def new_run_id() -> str:
        return uuid.uuid4().hex

    def record_generation(self, *, run_id: str, prompt: str, negative_prompt: str, seed: int, image_index: int,
                          parameters: dict, concept_ids: dict[str, str], output_path: Path | str | None,
                          duration_s: float | None) -> int:
        """Record one generated image; returns the history row id.

        parameters: every other setting (steps, guidance_scale, lambda, width, height,
        scheduler, models...) as JSON-serialisable values. concept_ids: {prompt name: id}.
        """
        from elite_cli.common.outputs import user_keys

        try:
            parameters_json = json.dumps(user_keys(parameters), sort_keys=True)
        except TypeError as error:
            raise InputError(f"generation parameters must be JSON values ({error}).") from None
        with self._write():
            cursor = self.conn.execute(
                "INSERT INTO generations (run_id, created, prompt, negative_prompt, seed, image_index, parameters,"
                " concept_ids, output_path, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, cf.utc_now(), prompt, negative_prompt, int(seed), int(image_index), parameters_json,
                 json.dumps(concept_ids, sort_keys=True), None if output_path is None else str(output_path),
                 duration_s])
            return cursor.lastrowid

    def copy_history_from(self, old_database: Path) -> tuple[int, bool]:
        """Copy the generation history out of another (damaged) library.db into this one's empty table.

        Returns (rows copied, whether every row could be read). Rows keep their ids, so runs keep
        their order; reading stops at the first damaged page, keeping what came before it.
        """
        import shutil
        import sqlite3
        import tempfile

        with tempfile.TemporaryDirectory(prefix="elite-history-") as scratch:
            # Read a copy: opening a WAL database, even read-only, may create -wal/-shm files,
            # and the damaged file is kept aside exactly as it was.
            copy = Path(scratch) / "library.db"
            for suffix in ("", "-wal"):
                if Path(f"{old_database}{suffix}").is_file():
                    shutil.copyfile(f"{old_database}{suffix}", f"{copy}{suffix}")
            return self._copy_history_rows(copy)

    def _copy_history_rows(self, old_database: Path) -> tuple[int, bool]:
        import sqlite3

        rows: list[tuple] = []
        try:
            old = sqlite3.connect(old_database)
        except sqlite3.Error:
            return 0, False
        try:
            columns = [row[1] for row in old.execute("PRAGMA table_info(generations)")]
            if not columns:  # no history table at all: nothing was lost
                return 0, True
            wanted = [column for column in columns if column in self._history_columns()]
            complete = True
            try:
                for row in old.execute(f"SELECT {', '.join(wanted)} FROM generations"):
                    rows.append(tuple(row))
            except sqlite3.Error:
                complete = False
        except sqlite3.Error:
            return 0, False
        finally:
            old.close()
        if rows:
            with self._write():
                self.conn.executemany(f"INSERT OR IGNORE INTO generations ({', '.join(wanted)}) "
                                      f"VALUES ({', '.join('?' * len(wanted))})", rows)
        return len(rows), complete

    def _history_columns(self) -> set[str]:
        return {row[1] for row in self.conn.execute("PRAGMA table_info(generations)")}

    def list_history(self, limit: int | None = 20, offset: int = 0, contains: str | None = None) -> list[HistoryEntry]:
        """Past generated images, newest first; `contains` filters prompts by a substring."""
        where, params = ("prompt LIKE ?", [f"%{contains}%"]) if contains else ("1", [])
        rows = self._dict_rows(f"SELECT * FROM generations WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                             [*params, -1 if limit is None else limit, offset])
        return [HistoryEntry.from_row(row) for row in rows]

    def list_runs(self, limit: int | None = 20) -> list[list[HistoryEntry]]:
        """Whole runs, newest first (by their latest image), each with every image row in row order.

        `limit` counts runs, not images, so a run is never cut in half by it.
        """
        run_ids = [row["run_id"] for row in self._dict_rows(
            "SELECT run_id, MAX(id) AS last FROM generations GROUP BY run_id ORDER BY last DESC LIMIT ?",
            [-1 if limit is None else limit])]
        runs: dict[str, list[HistoryEntry]] = {run_id: [] for run_id in run_ids}
        # In chunks: SQLite caps the number of ? parameters in one statement.
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            rows = self._dict_rows(f"SELECT * FROM generations WHERE run_id IN ({', '.join('?' * len(chunk))}) ORDER BY id",
                                   chunk)
            for row in rows:
                runs[row["run_id"]].append(HistoryEntry.from_row(row))
        return list(runs.values())

    def get_run(self, run_id: str) -> list[HistoryEntry]:
        """Every image of one run (by run id or a unique prefix of it), in index order."""
        rows = self._dict_rows("SELECT * FROM generations WHERE run_id >= ? AND run_id < ? "
                                "ORDER BY run_id, image_index", [run_id, run_id + "\uffff"])
        if len({row["run_id"] for row in rows}) > 1:
            raise LibraryError(f"run id prefix '{run_id}' matches several runs; give more characters.")
        if not rows:
            raise LibraryError(f"no generation run '{run_id}' in the history; list runs with `elite history`.")
        return [HistoryEntry.from_row(row) for row in rows]

    def _dict_rows(self, sql: str, params: list) -> list[dict]:
        cursor = self.conn.execute(sql, params)
        columns = [column[0] for column in cursor.description]
        return [dict(zip(columns, row)) for row in cursor]
