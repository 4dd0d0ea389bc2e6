"""Which concepts `elite eval` measures: library concepts by name, or pictures encoded on the fly.

A library concept brings its tensors (`ConceptStore.load`) and the source picture the store
keeps beside it (`ConceptStore.get(...)` record). A picture file given instead of a name is
encoded with the loaded models (no mask), named after its file stem, and never added to the
library: researchers can evaluate a folder of benchmark subjects without importing it.

The class word (CLIP-T text and DreamBench's live/object choice) comes from, in order:
`--class-word NAME=word`, a library tag `class-WORD` (tags follow the name rules, so
underscores stand for spaces: `class-stuffed_animal`), then DreamBench's own class list when
the concept is named like a DreamBench subject (`dog2` -> dog); otherwise it is unknown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from elite_cli.errors import InputError, LibraryError
from elite_cli.evaluation.dreambench import SUBJECT_CLASSES
from elite_cli.evaluation.runner import Subject

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# `class-cat`; `class_word-`, `class=` and `class:` are accepted too, for hand-edited tags.
CLASS_TAG = re.compile(r"^class(?:_word)?[-=:](.+)$", re.IGNORECASE)


def parse_class_words(values: Iterable[str]) -> dict[str, str]:
    """`["mycat=cat", "toy=stuffed animal"]` -> {"mycat": "cat", "toy": "stuffed animal"}."""
    words: dict[str, str] = {}
    for value in values:
        name, separator, word = value.partition("=")
        if not separator or not name.strip() or not word.strip() or "=" in word:
            raise InputError(f"--class-word {value!r} is not NAME=WORD; write e.g. --class-word mycat=cat.")
        word = " ".join(word.split())
        if words.get(name.strip(), word) != word:
            raise InputError(f"--class-word gives {name.strip()!r} two class words ({words[name.strip()]!r} and {word!r}); "
                             "give one per concept.")
        words[name.strip()] = word
    return words


def is_picture_path(name: str) -> bool:
    """Whether NAME means a picture file. Library names cannot hold '.' or '/', so there is no ambiguity."""
    looks_like_path = name.lower().endswith(PICTURE_SUFFIXES) or "/" in name or "\\" in name
    if looks_like_path and not Path(name).expanduser().is_file():
        raise InputError(f"picture file '{name}' does not exist; pass a PNG, JPEG or WebP file or a concept name from `elite list`.")
    return looks_like_path


def check_class_words(class_words: Mapping[str, str], names: Iterable[str]) -> None:
    """A --class-word for a concept that is not evaluated is a typo worth stopping for."""
    known = set(names)
    for name in class_words:
        if name not in known:
            raise InputError(f"--class-word names {name!r}, which is not among the concepts evaluated; use NAME=WORD with one of them.")


def picture_name(path: Path) -> str:
    """A valid concept name from a file stem (letters, digits, '-' and '_')."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_")[:64]
    return name or "picture"


def record_source_image(record: Any, home: Path | None = None) -> Path | None:
    """The copy of the source picture the library keeps beside the concept (StoredConcept.image_path)."""
    value = getattr(record, "image_path", None)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() or home is None else home / path


def record_class_word(record: Any) -> str | None:
    """The class word from a `class-WORD` tag (underscores read as spaces), else None."""
    tags = getattr(record, "tags", None) or ()
    for tag in tags:
        match = CLASS_TAG.match(str(tag).strip())
        if match:
            return " ".join(match.group(1).replace("_", " ").split())
    return None


def class_word_for(name: str, flags: Mapping[str, str], record: Any = None) -> str | None:
    if name in flags:
        return flags[name]
    stored = record_class_word(record) if record is not None else None
    return stored or SUBJECT_CLASSES.get(name)


def library_subject(store: Any, name: str, class_words: Mapping[str, str], home: Path | None = None) -> Subject:
    record = store.get(name)
    source = record_source_image(record, home)
    canonical = str(record.name)
    if source is None or not Path(source).is_file():
        raise LibraryError(f"the library keeps no source picture for <{canonical}>, which CLIP-I and DINO compare with; "
                           "pass the picture file instead of the name, or re-add the concept with its picture.")
    concept = store.load(name)
    word = class_words.get(name) or class_word_for(canonical, class_words, record)
    return Subject(canonical, concept, Path(source), word)


def picture_subject(path: Path, encoder: Any, class_words: Mapping[str, str]) -> Subject:
    name = picture_name(path)
    word = class_words.get(str(path), class_words.get(name)) or SUBJECT_CLASSES.get(name)
    return Subject(name, encoder.encode(path), path, word)


def check_unique(names: list[str]) -> None:
    """Each concept's images go to a folder named after it, so two subjects may not share a name."""
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise InputError(f"<{name}> is named twice; evaluate each concept once (rename one picture).")
        seen.add(name.lower())
