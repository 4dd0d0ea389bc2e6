"""What a mapper setting's file is, from its first bytes and safetensors header: no torch, no tensors.

One reading serves `mappers.load_mapper_state` (before it loads anything), `elite doctor` (which
must not import torch) and the fingerprints `elite list` computes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileProblem:
    what: str  # what the file is, after its name: "is an elite concept bundle ..."
    fix: str  # what to do instead


def checkpoint_kind(path: Path) -> str | None:
    """"zip" (torch.save), "pickle" (older torch.save), "safetensors", or None for anything else."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    # A safetensors file starts with its header's length (8 bytes, little-endian) and the JSON
    # header; one named .safetensors is taken for one, so that its damage is what gets reported.
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size):
        return "safetensors"
    return None


def mapper_file_problem(path: Path, role: str | None = None) -> FileProblem | None:
    """Why the file cannot be a (`role`) mapper checkpoint, as far as its head tells; None if it may be.

    A pickle's content, and a safetensors file's tensors, show only when they load.
    """
    kind = checkpoint_kind(path)
    if kind == "zip":
        import zipfile  # only here: `elite list` reads safetensors heads and should start fast

        # A cut download keeps its first bytes but loses the zip directory at the end.
        if zipfile.is_zipfile(path):
            return None
        return FileProblem(f"is a damaged or truncated PyTorch checkpoint ({path.stat().st_size} bytes)",
                           "download it again")
    if kind == "pickle":
        return None
    if kind is None:
        return FileProblem("is neither a PyTorch checkpoint nor a safetensors file",
                           "pass the ELITE global_mapper.pt / local_mapper.pt (or the .safetensors files "
                           "`elite models import` writes)")
    with path.open("rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        try:
            metadata = json.loads(handle.read(header_length)).get("__metadata__") or {}
            if not isinstance(metadata, dict):
                raise ValueError("metadata is not a mapping")
        except (ValueError, AttributeError):
            return FileProblem("is not a valid safetensors file (its header is damaged)", "convert or download it again")
    if metadata.get("format") == "elite-concept":
        return FileProblem("is an elite concept bundle (from `elite export`), not a mapper", "add it with `elite import`")
    recorded = metadata.get("mapper")
    if role and recorded in ("global", "local") and recorded != role:
        return FileProblem(f"is a {recorded} mapper (its metadata says so), not a {role} one",
                           f"pass it as the {recorded} mapper")
    return None


def require_mapper_file(path: Path, what: str, role: str | None = None) -> None:
    """Raise ModelError unless `path` may be a (`role`) mapper checkpoint, from its head alone.

    Torch-free, so a command refuses a missing or wrong mapper file before it imports and loads
    the other models (seconds) only to fail on this one.
    """
    from elite_cli.errors import ModelError

    label = f"{what} '{path}'"
    if not path.is_file():
        raise ModelError(f"{label} does not exist; run `elite models import` or pass --global-mapper/--local-mapper, "
                         "or try elite offline with `elite models tiny ./tiny --use`.")
    # The file's kind, a cut download, a concept bundle and a swapped role show in its head.
    problem = mapper_file_problem(path, role)
    if problem is not None:
        raise ModelError(f"{label} {problem.what}; {problem.fix}.")
