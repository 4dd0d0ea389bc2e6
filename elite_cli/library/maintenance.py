"""`check` and `repair`: make the index and the concept files agree (FORMAT.md, "Check and repair").

The concept files are self-describing, so they are the truth: repair indexes every valid file
the index lacks and drops rows whose file is gone. Run it when no other process is writing
(an add in flight looks exactly like the leftovers of a crashed one).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from elite_cli.errors import EliteError
from elite_cli.library import conceptfile as cf
from elite_cli.library.names import MAX_NAME_LENGTH, validate_name
from elite_cli.library.records import CheckReport, Problem, RepairReport

if TYPE_CHECKING:
    from elite_cli.library.store import ConceptStore

# <64 hex>.safetensors | <hex>.safetensors.removed | <hex>.thumb.png | <hex>.preview.png | <hex>.image.<ext> |
# <hex>.mask.<ext>
_FILE = re.compile(r"(?P<hex>[0-9a-f]{64})\.(?P<role>safetensors(?:\.removed)?|thumb\.png|preview\.png|image\.[^.]+|"
                   r"mask\.[^.]+)")


def _scan(directory: Path) -> tuple[dict[str, dict[str, str]], list[str], list[str]]:
    """Group the files of concepts/ by concept hex -> {role: file name}; also temps and strays."""
    by_hex: dict[str, dict[str, str]] = defaultdict(dict)
    temps, strays = [], []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(cf.TEMP_PREFIX):
                temps.append(name)
                continue
            match = _FILE.fullmatch(name)
            if not match:
                strays.append(name)
                continue
            role = match["role"]
            role = role.split(".", 1)[0] if role.startswith(("image.", "mask.")) else role
            by_hex[match["hex"]][role] = name
    return by_hex, sorted(temps), sorted(strays)


def check(store: "ConceptStore", verify_hashes: bool = True) -> CheckReport:
    report = CheckReport()
    problems = report.problems
    integrity = store.conn.execute("PRAGMA quick_check").fetchone()[0]
    if integrity != "ok":
        problems.append(Problem("index-corrupt", store.db_path.name, f"SQLite quick_check says: {integrity}"))
    rows = store.conn.execute("SELECT id, name, file_sha256, image_suffix, mask_suffix FROM concepts").fetchall()
    report.concepts = len(rows)
    by_hex, temps, strays = _scan(store.concepts_dir)
    report.files = sum(len(roles) for roles in by_hex.values()) + len(temps) + len(strays)
    indexed = set()
    for concept_id, name, file_sha, image_suffix, mask_suffix in rows:
        hex_id = cf.hex_of(concept_id)
        indexed.add(hex_id)
        roles = by_hex.get(hex_id, {})
        if "safetensors" not in roles:
            if "safetensors.removed" in roles:
                problems.append(Problem("removed-file", name, "an interrupted removal left the file renamed; "
                                        "repair puts it back"))
            else:
                problems.append(Problem("missing-file", name, f"concept file {hex_id}.safetensors is gone"))
            continue
        if verify_hashes and cf.sha256_file(store.concepts_dir / roles["safetensors"]) != file_sha:
            problems.append(Problem("hash-mismatch", name, "the concept file's sha256 differs from the index"))
        for role, suffix in (("image", image_suffix), ("mask", mask_suffix)):
            if suffix is not None and role not in roles:
                problems.append(Problem("missing-source", name, f"the stored source {role} {hex_id}.{role}{suffix} is gone"))
        if "thumb.png" not in roles:
            problems.append(Problem("missing-thumbnail", name, f"{hex_id}.thumb.png is gone"))
    for hex_id, roles in sorted(by_hex.items()):
        if hex_id in indexed:
            continue
        if "safetensors" in roles:
            problems.append(Problem("orphan-file", roles["safetensors"], "a concept file that the index lacks"))
        elif "safetensors.removed" in roles:
            problems.append(Problem("removed-file", roles["safetensors.removed"], "left by an interrupted removal"))
        else:
            for file_name in sorted(roles.values()):
                problems.append(Problem("orphan-companion", file_name, "a source, thumbnail or preview without its concept"))
    for file_name in temps:
        problems.append(Problem("temp-file", file_name, "a temporary file left by an interrupted write"))
    for file_name in strays:
        problems.append(Problem("stray-file", file_name, "not a file elite writes in concepts/"))
    return report


def _free_name(store: "ConceptStore", wanted: str) -> str:
    try:
        validate_name(wanted)
    except EliteError:
        wanted = "recovered"
    candidate, number = wanted, 1
    while store.exists(candidate):
        number += 1
        suffix = f"-{number}"
        candidate = wanted[: MAX_NAME_LENGTH - len(suffix)] + suffix
    return candidate


QUARANTINE_DIR = "quarantine"


class _Quarantine:
    """Where one repair moves what it must not delete: `<home>/quarantine/<time>/`, made on
    first use. A folder per repair keeps a second repair from overwriting what the first kept."""

    def __init__(self, store: "ConceptStore"):
        stamp = cf.utc_now().replace(":", "").replace("-", "").replace(".", "-")
        self.folder = store.home / QUARANTINE_DIR / stamp
        self.concepts_dir = store.concepts_dir
        self.used = False

    def move(self, file_name: str, actions: list[str], why: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target, number = self.folder / file_name, 1
        while target.exists():  # os.replace would overwrite it
            number += 1
            target = self.folder / f"{number}-{file_name}"
        os.replace(self.concepts_dir / file_name, target)
        self.used = True
        actions.append(f"moved {file_name} to {QUARANTINE_DIR}/{self.folder.name}/ ({why})")


def _index_file(store: "ConceptStore", file_name: str, roles: dict[str, str], actions: list[str],
                quarantine: _Quarantine) -> None:
    """Index (or re-index) a concept file from its own metadata; quarantine it if invalid."""
    path = store.concepts_dir / file_name
    try:
        stored = cf.load_path(path)
    except EliteError as error:
        quarantine.move(file_name, actions, str(error))
        return
    metadata = dict(stored.metadata)
    if cf.hex_of(stored.concept_id) != file_name.split(".", 1)[0]:
        quarantine.move(file_name, actions, "its file name does not match its concept id")
        return
    suffixes = {role: "." + roles[role].split(".", 2)[2] if role in roles else None for role in ("image", "mask")}
    with store._write():
        store.conn.execute("DELETE FROM concept_tags WHERE concept_id = ?", [stored.concept_id])
        store.conn.execute("DELETE FROM concepts WHERE id = ?", [stored.concept_id])
        name = _free_name(store, metadata["name"])
        try:
            tags = [validate_name(tag, "tag") for tag in json.loads(metadata["tags"])]
        except EliteError:
            tags = []
        if name != metadata["name"] or json.dumps(sorted(tags)) != metadata["tags"]:
            # Keep the file the truth: a later repair must rebuild the same index.
            metadata.update(name=name, tags=json.dumps(sorted(tags)))
            cf.atomic_write(path, cf.serialize({key: stored.tensors[key] for key in cf.CONCEPT_TENSORS}, metadata))
        store._insert_row(metadata, cf.sha256_file(path), suffixes["image"], suffixes["mask"], updated=cf.utc_now())
    actions.append(f"indexed {file_name} as '{name}'")


def repair(store: "ConceptStore") -> RepairReport:
    report = RepairReport()
    actions = report.actions
    quarantine = _Quarantine(store)
    # A fix can reveal another problem (dropping a row orphans its companions), so go round
    # until check is clean or nothing more can be done.
    for _ in range(4):
        found = check(store, verify_hashes=True)
        if found.ok:
            break
        by_hex, _, _ = _scan(store.concepts_dir)
        rows = {cf.hex_of(row[0]): row for row in store.conn.execute("SELECT id, name FROM concepts")}
        by_name = {row[1]: row for row in rows.values()}
        for problem in found.problems:
            kind, subject = problem.kind, problem.subject
            if kind == "index-corrupt":
                actions.append(f"cannot repair {subject} in place; run `elite check --repair` to rebuild it from the concept files")
            elif kind == "orphan-companion" and _FILE.fullmatch(subject)["role"].startswith(("image.", "mask.")):
                # The user's own picture or mask: never deleted, so it can be added again.
                quarantine.move(subject, actions, "the source picture of a concept whose file is gone or damaged; "
                                "add it again with `elite add`")
            elif kind == "orphan-companion":
                # A lost concept's thumbnail and preview go with its picture: a repair deletes nothing of a concept.
                role = "preview" if _FILE.fullmatch(subject)["role"] == "preview.png" else "thumbnail"
                quarantine.move(subject, actions, f"the {role} of a concept whose file is gone or damaged")
            elif kind == "temp-file":
                (store.concepts_dir / subject).unlink(missing_ok=True)
                actions.append(f"deleted {subject} ({problem.detail})")
            elif kind == "stray-file":
                quarantine.move(subject, actions, problem.detail)
            elif kind == "removed-file":
                row = by_name.get(subject)
                if row is not None:  # the removal never committed: undo it
                    hex_id = cf.hex_of(row[0])
                    os.replace(store.concepts_dir / f"{hex_id}.safetensors{cf.REMOVED_SUFFIX}",
                               store.concepts_dir / f"{hex_id}.safetensors")
                    actions.append(f"restored the file of '{subject}' (its removal was interrupted)")
                else:  # the removal committed: finish it
                    (store.concepts_dir / subject).unlink(missing_ok=True)
                    actions.append(f"deleted {subject} (its removal was interrupted after commit)")
            elif kind == "missing-file":
                concept_id = by_name[subject][0]
                with store._write():
                    store.conn.execute("DELETE FROM concept_tags WHERE concept_id = ?", [concept_id])
                    store.conn.execute("DELETE FROM concepts WHERE id = ?", [concept_id])
                actions.append(f"dropped '{subject}' from the index (its concept file is gone)")
            elif kind == "hash-mismatch":
                hex_id = cf.hex_of(by_name[subject][0])
                _index_file(store, f"{hex_id}.safetensors", by_hex.get(hex_id, {}), actions, quarantine)
            elif kind == "orphan-file":
                hex_id = subject.split(".", 1)[0]
                _index_file(store, subject, by_hex.get(hex_id, {}), actions, quarantine)
            elif kind == "missing-source":
                role = "image" if ".image" in problem.detail else "mask"
                with store._write():
                    store.conn.execute(f"UPDATE concepts SET {role}_suffix = NULL WHERE name = ?", [subject])
                actions.append(f"noted that '{subject}' has no stored {role} any more")
            elif kind == "missing-thumbnail":
                _rebuild_thumbnail(store, subject)
                actions.append(f"rebuilt the thumbnail of '{subject}'")
    report.after = check(store, verify_hashes=True)
    report.quarantine = quarantine.folder if quarantine.used else None
    return report


def _rebuild_thumbnail(store: "ConceptStore", name: str) -> None:
    from elite_cli.library.thumbnails import placeholder_thumbnail, thumbnail_png

    record = store.get(name)
    if record.image_path is not None and record.image_path.exists():
        data = thumbnail_png(record.image_path)
    else:
        data = placeholder_thumbnail()
    cf.atomic_write(record.thumbnail_path, data)
