"""Concept names and tags: what is accepted, and how a file name becomes a valid default name."""

from __future__ import annotations

import difflib
import re
import unicodedata

from elite_cli.errors import InputError

NAME_RULE = "letters, digits, '-' and '_', 1 to 64 characters"
MAX_NAME_LENGTH = 64
# ASCII only: names appear inside prompts as <name> and as file names on every platform,
# so anything that could be a path separator, a shell metacharacter or look-alike is out.
_VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INVALID_RUN = re.compile(r"[^A-Za-z0-9_-]+")


def validate_name(name: str, what: str = "concept name") -> str:
    """Return `name` unchanged if it follows the rule, else raise InputError stating the rule."""
    if not isinstance(name, str) or not _VALID.fullmatch(name):
        shown = repr(name) if isinstance(name, str) else type(name).__name__
        raise InputError(f"{what} {shown} is not valid; use {NAME_RULE}.")
    return name


def validate_tag(tag: str) -> str:
    return validate_name(tag, "tag")


def name_from_stem(stem: str) -> str:
    """Make a valid name from an image file stem: 'My Cat (2).jpg' -> 'My_Cat_2'.

    Accents are folded to ASCII first so 'café' gives 'cafe' rather than 'caf'.
    """
    folded = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    cleaned = _INVALID_RUN.sub("_", folded).strip("_-")[:MAX_NAME_LENGTH].strip("_-")
    return cleaned or "concept"


def closest_names(name: str, candidates: list[str], limit: int = 3) -> list[str]:
    """Candidates that look like `name` (case-insensitive), best first, for 'unknown name' hints."""
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_folded), n=limit, cutoff=0.6)
    return [by_folded[match] for match in matches]
