"""Typed errors raised by the core. The CLI turns each into one line `Error: ...`.

Every message is one sentence that names the problem and what is accepted.
"""


class EliteError(Exception):
    """Base class for every problem the user can fix."""


class InputError(EliteError):
    """A bad argument, image, mask or prompt."""


class ModelError(EliteError):
    """A model or mapper checkpoint that is missing, malformed or does not fit."""


class LibraryError(EliteError):
    """A problem with the concept library."""


class IndexUnreadable(LibraryError):
    """library.db cannot be opened or read; `ConceptStore.rebuild_index` rebuilds it from the files."""


class ConceptNotFound(LibraryError):
    """No concept with that name or id."""


class NameClash(LibraryError):
    """A concept with that name already exists (`taken`: that name, where the fix is another name)."""

    def __init__(self, message: str, taken: str | None = None):
        super().__init__(message)
        self.taken = taken


class FormatError(LibraryError):
    """A concept file that is not a valid elite concept."""
