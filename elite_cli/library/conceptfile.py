"""The on-disk concept file (library/FORMAT.md, "Concept file"): writing, validating, reading.

Everything read from disk is treated as hostile: the safetensors header is parsed here with a
size cap before any library sees the file, pickles are recognised and refused, and tensor
names, dtypes, shapes, dims metadata and values are checked. torch is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from elite_cli.model.concept import NUM_WORDS, Concept
from elite_cli.errors import FormatError

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "elite-concept"
# Version 2 added the `preprocessing` and `crop` metadata keys (how the picture was made square).
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
# The header of a real concept is under 2 KiB; the cap stops a hostile file from making us
# parse megabytes of JSON (safetensors itself allows 100 MB headers).
MAX_HEADER_BYTES = 64 * 1024
# Plausible dims: CLIP text widths are 768 (SD 1.x) to 1280; ViT grids 7 to 37 patches a side.
MAX_TEXT_WIDTH = 8192
MAX_GRID = 64
MAX_THUMBNAIL_SIDE = 256

CONCEPT_TENSORS = ("words", "local", "mask")
THUMBNAIL_TENSOR = "thumbnail"  # only in exported bundles (uint8 [H, W, 3])
PROVENANCE_KEYS = ("global_mapper", "local_mapper", "base_model", "image_encoder", "image_sha256", "mask_sha256",
                   "preprocessing", "crop")
# Keys a version-1 file lacks, and what they mean there: every picture was cut to the square
# around its object (elite_cli.model.images.PREPROCESSING_VERSION 1).
VERSION_1_DEFAULTS = {"preprocessing": "1", "crop": ""}
REQUIRED_METADATA = ("format", "format_version", "concept_id", "name", "created", "text_width", "grid", "num_words",
                     *PROVENANCE_KEYS)
# Where the object mask came from (FORMAT.md 2.1). Optional: files written before elite recorded
# it lack them, which reads as "" (not recorded); a key is written only when it has a value.
MASK_KEYS = ("mask_source", "mask_model", "mask_object")
MASK_SOURCES = ("file", "painted", "alpha", "auto", "none")


def provenance_of(metadata: dict[str, str]) -> dict[str, str]:
    """The provenance keys of a concept file's metadata, missing ones filled in, and the mask keys
    it records (as the encoder's provenance has them: only those with a value)."""
    provenance = {key: metadata.get(key, VERSION_1_DEFAULTS.get(key, "")) for key in PROVENANCE_KEYS}
    provenance.update({key: metadata[key] for key in MASK_KEYS if metadata.get(key)})
    return provenance


def recorded_keys(provenance: dict[str, str]) -> dict[str, str]:
    """The provenance a concept file records: every PROVENANCE_KEYS value and the mask keys that are set."""
    recorded = {key: str(provenance[key]) for key in PROVENANCE_KEYS if key in provenance}
    recorded.update({key: str(provenance[key]) for key in MASK_KEYS if provenance.get(key)})
    return recorded

_PICKLE_HINT = "only elite concept .safetensors files are accepted"
TRUNCATED_HINT = "copy it again, or write it again with `elite export`"


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def utc_now() -> str:
    """ISO 8601 UTC with microseconds: sorts as text, and two adds in one second stay ordered."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hex_of(concept_id: str) -> str:
    """'sha256:ab12..' -> 'ab12..' (file names avoid ':' because Windows refuses it)."""
    return concept_id.split(":", 1)[1]


@dataclass
class ConceptFile:
    """A validated concept file: tensors as stored (fp16) plus its string metadata."""

    tensors: dict[str, "torch.Tensor"]
    metadata: dict[str, str]

    @property
    def concept_id(self) -> str:
        return self.metadata["concept_id"]

    @property
    def tags(self) -> list[str]:
        return json.loads(self.metadata.get("tags", "[]"))

    def to_concept(self) -> Concept:
        """The in-memory concept, tensors as float32."""
        provenance = provenance_of(self.metadata)
        import numpy as np
        import torch

        # fp16 -> fp32 through numpy: exact, and much faster than torch's CPU fp16 kernels.
        as_float = {name: torch.from_numpy(self.tensors[name].numpy().astype(np.float32)) for name in CONCEPT_TENSORS}
        return Concept(words=as_float["words"], local=as_float["local"], mask=as_float["mask"],
                       provenance=provenance, name=self.metadata["name"])


def disk_tensors(concept: Concept) -> dict[str, "torch.Tensor"]:
    """The concept's tensors as they go to disk: fp16, contiguous, on the CPU."""
    import torch

    import numpy as np

    # Round to fp16 through numpy (same IEEE round-to-nearest-even as torch, and faster on CPU).
    return {name: torch.from_numpy(getattr(concept, name).detach().to("cpu", torch.float32).numpy().astype(np.float16))
            for name in CONCEPT_TENSORS}


def concept_id_of(tensors: dict[str, "torch.Tensor"]) -> str:
    """Content id: sha256 over name, dtype, shape and raw bytes of words, local, mask (FORMAT.md).

    Metadata (name, tags, time) is left out so renaming or tagging keeps the id.
    """
    digest = hashlib.sha256()
    for name in CONCEPT_TENSORS:
        tensor = tensors[name]
        digest.update(f"{name}:{str(tensor.dtype).removeprefix('torch.')}:{list(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().view(-1).view(_uint8_dtype()).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _uint8_dtype():
    import torch

    return torch.uint8


def concept_metadata(concept: Concept, tensors: dict[str, "torch.Tensor"], *, name: str, created: str,
                     tags: list[str] | tuple[str, ...] = (), extra: dict[str, str] | None = None) -> dict[str, str]:
    """Build the metadata block for a concept; missing provenance keys become '' (unknown)."""
    words, mask = tensors["words"], tensors["mask"]
    metadata = {key: str(concept.provenance.get(key, "")) for key in PROVENANCE_KEYS}
    metadata.update({key: str(concept.provenance[key]) for key in MASK_KEYS if concept.provenance.get(key)})
    metadata.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, concept_id=concept_id_of(tensors), name=name,
                    created=created, text_width=str(words.shape[1]), grid=str(mask.shape[0]),
                    num_words=str(words.shape[0]), tags=json.dumps(sorted(set(tags))))
    metadata.update(extra or {})
    return metadata


_DTYPE_CODES = {"float16": "F16", "float32": "F32", "uint8": "U8"}


def serialize(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str]) -> bytes:
    """safetensors bytes, deterministic: equal content always gives equal bytes.

    Written here rather than by safetensors.torch.save, whose metadata order varies between
    calls (a hash map), because bundles must round-trip byte for byte. Layout per the
    safetensors spec: u64 header length, JSON header (metadata keys and tensors sorted,
    space-padded to 8 bytes), then each tensor's little-endian bytes in header order.
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        blob = tensor.view(-1).view(_uint8_dtype()).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _DTYPE_CODES[str(tensor.dtype).removeprefix("torch.")],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs)


# --- reading -------------------------------------------------------------------------------------

def read_header(data: bytes, label: str, accepted: str = _PICKLE_HINT) -> dict:
    """Parse and sanity-check a safetensors header from the first bytes of a file.

    accepted: what the caller takes, for the end of the refusal ("only ... are accepted").
    """
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else None
    header = None
    if size is not None and size <= MAX_HEADER_BYTES:
        try:
            header = json.loads(data[8 : 8 + size].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if header is None:
        # Only now look for pickle signatures: a valid header length may start with 0x80 too.
        if data[:2] == b"PK" or data[:1] == b"\x80":
            raise FormatError(f"'{label}' is a PyTorch pickle checkpoint, which elite never loads because pickles "
                              f"can run code; {accepted}.")
        if size is None:
            raise FormatError(f"'{label}' is too short to be a safetensors file; {accepted}.")
        if size > MAX_HEADER_BYTES and data[8:9] == b"{":  # a header, only too large (other files: below)
            raise FormatError(f"'{label}' has a {size}-byte header, over the {MAX_HEADER_BYTES}-byte limit for "
                              "concept files.")
        if len(data) < 8 + size and data[8:9] == b"{":
            raise FormatError(f"'{label}' is truncated (it ends inside its safetensors header); {TRUNCATED_HINT}.")
        raise FormatError(f"'{label}' is not a safetensors file; {accepted}.")
    raw = data[8 : 8 + size]
    if len(raw) < size or not isinstance(header, dict):
        raise FormatError(f"'{label}' has a truncated or malformed safetensors header; {TRUNCATED_HINT}.")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"'{label}' has non-string metadata; elite concept metadata values are strings.")
    return header


def check_length(header: dict, data: bytes, label: str) -> None:
    """Refuse a file shorter than its header says (cut off while copying or downloading)."""
    size = int.from_bytes(data[:8], "little")
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"
            and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
            and isinstance(entry["data_offsets"][1], int)]
    expected = 8 + size + max(ends, default=0)
    if len(data) < expected:
        raise FormatError(f"'{label}' is truncated: it has {len(data)} of its {expected} bytes; {TRUNCATED_HINT}.")


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a concept file, from its header alone (cheap: no tensors are read)."""
    with open(path, "rb") as handle:
        head = handle.read(8 + MAX_HEADER_BYTES)
    header = read_header(head, str(path))
    _check_metadata(header.get("__metadata__", {}), str(path))
    return header["__metadata__"]


def _check_metadata(metadata: dict[str, str], label: str) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise FormatError(f"'{label}' is not an elite concept (metadata 'format' is {metadata.get('format')!r}, "
                          f"expected {FORMAT_NAME!r}).")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise FormatError(f"'{label}' uses concept format version {version!r}; this elite "
                          f"reads versions {' and '.join(READABLE_VERSIONS)}, so upgrade elite to read it.")
    required = [key for key in REQUIRED_METADATA if not (version == "1" and key in VERSION_1_DEFAULTS)]
    missing = [key for key in required if key not in metadata]
    if missing:
        raise FormatError(f"'{label}' lacks the metadata keys {', '.join(missing)}, which every concept file has.")
    if metadata.get("mask_source", "") not in ("", *MASK_SOURCES):
        raise FormatError(f"'{label}' has mask_source {metadata['mask_source']!r}; accepted are "
                          f"{', '.join(MASK_SOURCES)}.")


def _expect(condition: bool, label: str, problem: str) -> None:
    if not condition:
        raise FormatError(f"'{label}' {problem}.")


def validate(header: dict, label: str, allow_thumbnail: bool) -> None:
    """Check names, dtypes and shapes from the header, before any tensor is materialised."""
    metadata = header.get("__metadata__", {})
    _check_metadata(metadata, label)
    entries = {key: value for key, value in header.items() if key != "__metadata__"}
    allowed = set(CONCEPT_TENSORS) | ({THUMBNAIL_TENSOR} if allow_thumbnail else set())
    names = set(entries)
    _expect(set(CONCEPT_TENSORS) <= names <= allowed, label,
            f"holds tensors {sorted(names)}; a concept holds exactly {list(CONCEPT_TENSORS)}"
            + (f" and optionally '{THUMBNAIL_TENSOR}'" if allow_thumbnail else ""))
    try:
        text_width, grid, num_words = int(metadata["text_width"]), int(metadata["grid"]), int(metadata["num_words"])
    except ValueError:
        raise FormatError(f"'{label}' has non-integer dims metadata; text_width, grid and num_words are integers.") from None
    _expect(num_words == NUM_WORDS and 0 < text_width <= MAX_TEXT_WIDTH and 0 < grid <= MAX_GRID, label,
            f"declares num_words={num_words}, text_width={text_width}, grid={grid}; accepted are num_words={NUM_WORDS}, "
            f"text_width 1..{MAX_TEXT_WIDTH}, grid 1..{MAX_GRID}")
    expected = {"words": [NUM_WORDS, text_width], "local": [grid * grid, text_width], "mask": [grid, grid]}
    for name, shape in expected.items():
        entry = entries[name]
        _expect(isinstance(entry, dict) and entry.get("dtype") == "F16", label,
                f"stores '{name}' as {entry.get('dtype') if isinstance(entry, dict) else entry!r}; concept tensors are F16")
        _expect(entry.get("shape") == shape, label, f"has '{name}' of shape {entry.get('shape')}, expected {shape}")
    if THUMBNAIL_TENSOR in entries:
        entry = entries[THUMBNAIL_TENSOR]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        _expect(entry.get("dtype") == "U8" and isinstance(shape, list) and len(shape) == 3 and shape[2] == 3
                and all(isinstance(s, int) and 0 < s <= MAX_THUMBNAIL_SIDE for s in shape[:2]), label,
                f"has a thumbnail that is not uint8 [H, W, 3] with sides up to {MAX_THUMBNAIL_SIDE}")


def load_bytes(data: bytes, label: str, allow_thumbnail: bool = False, accepted: str = _PICKLE_HINT) -> ConceptFile:
    """Validate and load concept (or bundle) bytes. Raises FormatError naming the first problem."""
    import numpy as np
    from safetensors.torch import load

    header = read_header(data, label, accepted)
    validate(header, label, allow_thumbnail)
    check_length(header, data, label)
    try:
        tensors = load(data)
    except Exception as error:  # safetensors raises its own error types for bad offsets/lengths
        raise FormatError(f"'{label}' has corrupt tensor data ({error}); re-export it with elite.") from None
    # numpy, not torch: torch's fp16 kernels on CPU are ~50x slower for these element checks.
    arrays = {name: tensors[name].numpy() for name in CONCEPT_TENSORS}
    for name, array in arrays.items():
        _expect(bool(np.isfinite(array).all()), label, f"has non-finite values (NaN or inf) in '{name}'")
    mask = arrays["mask"]
    _expect(bool(((mask == 0) | (mask == 1)).all()), label, "has a mask with values other than 0 and 1")
    outside = arrays["local"][mask.reshape(-1) == 0]
    _expect(bool((outside == 0).all()), label, "has local tokens outside the mask that are not zero")
    metadata = header["__metadata__"]
    concept_tensors = {name: tensors[name] for name in CONCEPT_TENSORS}
    _expect(concept_id_of(concept_tensors) == metadata["concept_id"], label,
            "has tensors whose content hash does not match its concept_id (the file was altered)")
    try:
        tags = json.loads(metadata.get("tags", "[]"))
    except json.JSONDecodeError:
        tags = None
    _expect(isinstance(tags, list) and all(isinstance(tag, str) for tag in tags), label,
            "has a 'tags' metadata value that is not a JSON list of strings")
    return ConceptFile(tensors=tensors, metadata=dict(metadata))


def load_path(path: Path, allow_thumbnail: bool = False) -> ConceptFile:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise FormatError(f"concept file '{path}' cannot be read; pass an existing .safetensors file.") from None
    # The largest valid concept (8192 wide, 64x64 grid) is ~67 MB; anything much bigger is not one.
    _expect(size <= 128 * 1024 * 1024, str(path), f"is {size} bytes, far larger than any concept file")
    return load_bytes(path.read_bytes(), str(path), allow_thumbnail)


# --- atomic writes -------------------------------------------------------------------------------

def temp_path_for(final: Path) -> Path:
    """A temp name in the same folder (so os.replace is atomic); `check` recognises the prefix."""
    return final.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{final.name}")


TEMP_PREFIX = ".tmp-"
# A concept file renamed inside an open removal transaction (see store.remove).
REMOVED_SUFFIX = ".removed"


def write_temp(final: Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `final` and fsync it; the caller renames it into place."""
    temp = temp_path_for(final)
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        temp.unlink(missing_ok=True)
        if error.filename == str(temp) and error.errno is not None:
            # The temp name is ours: the user asked for `final`, so that is the path to report.
            raise type(error)(error.errno, error.strerror, str(final)) from None
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable (POSIX); Windows cannot open folders, and needs not."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: Path, data: bytes) -> None:
    temp = write_temp(final, data)
    try:
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
