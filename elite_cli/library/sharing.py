"""Sharing concepts: the elite bundle (exact round trip) and textual-inversion exports.

Bundle = the library's concept file plus a `thumbnail` tensor; its metadata is unchanged, so
importing and exporting again reproduces the bundle byte for byte. TI exports carry only the
primary word w0: ELITE's local patch tokens have no counterpart in those formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from elite_cli.errors import EliteError, FormatError, InputError
from elite_cli.library import conceptfile as cf
from elite_cli.library.names import validate_name, validate_tag
from elite_cli.library.records import ExportResult, StoredConcept
from elite_cli.library.thumbnails import placeholder_thumbnail, png_to_tensor, tensor_to_png

if TYPE_CHECKING:
    from elite_cli.library.store import ConceptStore

EXPORT_FORMATS = ("elite", "diffusers", "a1111")
LOCAL_DETAIL_NOTE = ("only the primary word w0 is exported; local detail does not travel (ELITE's masked patch "
                     "tokens have no place in textual-inversion formats), so other tools reproduce the concept "
                     "less faithfully than elite")
IMPORT_ACCEPTS = "elite import accepts only concept bundles written by `elite export` (its default --format elite)"
# Tensor names of the textual-inversion formats: A1111 (.safetensors and old .pt) and diffusers' own.
TEXTUAL_INVERSION_TENSORS = ("emb_params", "string_to_param", "learned_embeds")
# A bundle is a concept file (~0.4 MB for SD 1.x) plus a thumbnail; 128 MB is far above any real one.
MAX_BUNDLE_BYTES = 128 * 1024 * 1024


def export_concept(store: "ConceptStore", name_or_id: str, path: Path, format: str = "elite",
                   token: str | None = None, overwrite: bool = False) -> ExportResult:
    """Write concept `name_or_id` to `path` (a folder gets `<name>.safetensors`).

    format: "elite" (bundle for `import_concept`), "diffusers" (`{token: [1, Dt]}` for
    `pipe.load_textual_inversion`, token defaults to `<name>`), "a1111" (`{"emb_params": [1, Dt]}`
    for the WebUI's embeddings folder, where the file name is the trigger word).
    """
    if format not in EXPORT_FORMATS:
        raise InputError(f"export format '{format}' is not known; use one of {', '.join(EXPORT_FORMATS)}.")
    record = store.get(name_or_id)
    if path.is_dir():
        path = path / f"{record.name}.safetensors"
    if path.suffix != ".safetensors":
        raise InputError(f"export path '{path}' must end in .safetensors (all export formats are safetensors).")
    if not path.parent.is_dir():
        raise InputError(f"folder '{path.parent}' does not exist; create it first or export into an existing folder.")
    if path.exists() and not overwrite:
        raise InputError(f"'{path}' already exists; pass --overwrite to replace it, or choose another file.")
    stored = cf.load_path(record.file_path)
    if format == "elite":
        thumbnail = record.thumbnail_path.read_bytes() if record.thumbnail_path.exists() else placeholder_thumbnail()
        tensors = {**stored.tensors, cf.THUMBNAIL_TENSOR: png_to_tensor(thumbnail)}
        cf.atomic_write(path, cf.serialize(tensors, stored.metadata))
        return ExportResult(path=path, format=format, note="")
    primary = stored.tensors["words"][:1].float().contiguous()  # [1, Dt]
    common = {"elite_concept_id": record.id, "elite_note": LOCAL_DETAIL_NOTE, "base_model": record.base_model}
    if format == "diffusers":
        token = token or f"<{record.name}>"
        cf.atomic_write(path, cf.serialize({token: primary}, {"format": "pt", "token": token, **common}))
    else:
        # The WebUI reads the single tensor and names the embedding after the file; the keys below
        # are the ones its own embeddings carry (name, step, sd_checkpoint_name), for its UI cards.
        metadata = {"name": token or record.name, "step": "0", "sd_checkpoint_name": record.base_model, **common}
        cf.atomic_write(path, cf.serialize({"emb_params": primary}, metadata))
    return ExportResult(path=path, format=format, note=LOCAL_DETAIL_NOTE)


def import_bundle(store: "ConceptStore", path: Path, name: str | None = None, replace: bool = False) -> StoredConcept:
    """Validate an elite bundle completely, then store it (name from the bundle unless given).

    Returns the existing record with duplicate=True when the library already has it.
    """
    data, metadata, thumbnail = read_bundle(path, name)
    return store._store(data, metadata, thumbnail, sources=[], replace=replace)


def read_bundle(path: Path, name: str | None = None) -> tuple[bytes, dict, bytes]:
    """Validate an elite bundle without touching any library (so a refused file creates none).

    Returns the concept file bytes, its metadata (name from `name` when given) and the thumbnail PNG.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"'{path}' does not exist; pass an elite concept bundle (.safetensors).")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise FormatError(f"'{path}' is larger than {MAX_BUNDLE_BYTES} bytes, far above any concept bundle.")
    if name is not None:
        validate_name(name)  # a bad --name is the user's typo: say so before reading the file
    data = path.read_bytes()
    refusal = _not_a_bundle(cf.read_header(data, str(path), IMPORT_ACCEPTS), str(path))
    if refusal is not None:
        raise refusal
    bundle = cf.load_bytes(data, str(path), allow_thumbnail=True, accepted=IMPORT_ACCEPTS)
    metadata = dict(bundle.metadata)
    try:
        metadata["name"] = validate_name(name if name is not None else metadata["name"])
        for tag in bundle.tags:
            validate_tag(tag)
    except EliteError as error:
        if name is not None:
            raise
        raise FormatError(f"'{path}' carries an invalid name or tag ({error}); import it with --name NAME.") from None
    tensors = {key: bundle.tensors[key] for key in cf.CONCEPT_TENSORS}
    if cf.THUMBNAIL_TENSOR in bundle.tensors:
        thumbnail = tensor_to_png(bundle.tensors[cf.THUMBNAIL_TENSOR])
    else:
        thumbnail = placeholder_thumbnail()
    return cf.serialize(tensors, metadata), metadata, thumbnail


def _not_a_bundle(header: dict, label: str) -> FormatError | None:
    """A refusal naming what a safetensors file is when it is not an elite bundle, else None."""
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") == cf.FORMAT_NAME:
        return None
    tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
    shapes = [entry.get("shape") for entry in tensors.values() if isinstance(entry, dict)]
    # diffusers' files hold one [tokens, width] tensor named after the trigger word.
    single_embedding = len(shapes) == 1 and isinstance(shapes[0], list) and len(shapes[0]) in (1, 2)
    if single_embedding or any(name in tensors for name in TEXTUAL_INVERSION_TENSORS) or "elite_note" in metadata:
        return FormatError(f"'{label}' is a textual-inversion embedding (diffusers or A1111 format), not an elite "
                           f"concept bundle, and it cannot be turned back into one; {IMPORT_ACCEPTS}.")
    return FormatError(f"'{label}' is a safetensors file but not an elite concept bundle (its metadata lacks "
                       f"format '{cf.FORMAT_NAME}'); {IMPORT_ACCEPTS}.")
