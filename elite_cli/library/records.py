"""Plain records the store returns: stored concepts, check reports, history rows. No torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StoredConcept:
    """One concept as the library knows it (a row of the index plus where its files are).

    `duplicate` is True when `add`/`import_concept` found the concept already stored and
    returned the existing record instead of storing a second copy.
    """

    id: str
    name: str
    created: str
    updated: str
    file_sha256: str
    text_width: int
    grid: int
    global_mapper: str
    local_mapper: str
    base_model: str
    image_encoder: str
    image_sha256: str
    mask_sha256: str
    tags: tuple[str, ...]
    file_path: Path
    image_path: Path | None
    mask_path: Path | None
    thumbnail_path: Path
    duplicate: bool = False
    # How the picture was made square (elite_cli.model.images): the preprocessing version (1 for
    # concepts made before it was recorded) and the crop mode ("" when not recorded).
    preprocessing: int = 1
    crop: str = ""

    @property
    def preview_path(self) -> Path:
        """Where the preview of the object on the picture is (`<hex>.preview.png`, written for
        concepts with a marked object; check it exists)."""
        return self.thumbnail_path.with_name(self.thumbnail_path.name.replace(".thumb.png", ".preview.png"))

    @property
    def short_id(self) -> str:
        """The first 12 hex digits, enough to name a concept in a library of millions."""
        return self.id.split(":", 1)[-1][:12]

    def mapper_matches(self, global_fingerprint: str, local_fingerprint: str) -> bool:
        """Whether this concept was encoded by the given mapper weights."""
        return self.global_mapper == global_fingerprint and self.local_mapper == local_fingerprint

    def preprocessing_is_current(self) -> bool:
        """Whether this concept's picture was prepared as elite prepares pictures now."""
        from elite_cli.model.concept import PREPROCESSING_VERSION

        return self.preprocessing >= PREPROCESSING_VERSION

    def to_dict(self) -> dict:
        """JSON-ready form for `--json` listings (paths as strings)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["tags"] = list(self.tags)
        return data


@dataclass(frozen=True)
class Problem:
    """One inconsistency found by `check`. kind is a stable slug (FORMAT.md lists them)."""

    kind: str
    subject: str  # a concept name, id or file name
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


@dataclass
class CheckReport:
    concepts: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RepairReport:
    """What `repair` did, one line per action, and the check that followed."""

    actions: list[str] = field(default_factory=list)
    after: CheckReport | None = None
    quarantine: Path | None = None  # the folder this repair moved files to, if it moved any


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    note: str  # "" for the elite bundle; TI formats say that local detail does not travel


@dataclass(frozen=True)
class HistoryEntry:
    """One generated image as recorded by `record_generation`."""

    id: int
    run_id: str
    created: str
    prompt: str
    negative_prompt: str
    seed: int
    image_index: int
    parameters: dict
    concept_ids: dict[str, str]
    output_path: str | None
    duration_s: float | None

    @classmethod
    def from_row(cls, row: dict) -> "HistoryEntry":
        from elite_cli.common.outputs import user_keys  # rows written before say `llambda`

        return cls(id=row["id"], run_id=row["run_id"], created=row["created"], prompt=row["prompt"],
                   negative_prompt=row["negative_prompt"], seed=row["seed"], image_index=row["image_index"],
                   parameters=user_keys(json.loads(row["parameters"])), concept_ids=json.loads(row["concept_ids"]),
                   output_path=row["output_path"], duration_s=row["duration_s"])

    def preprocessing_is_current(self) -> bool:
        """Whether this concept's picture was prepared as elite prepares pictures now."""
        from elite_cli.model.concept import PREPROCESSING_VERSION

        return self.preprocessing >= PREPROCESSING_VERSION

    def to_dict(self) -> dict:
        return asdict(self)
