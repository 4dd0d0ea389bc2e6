"""The fingerprints of the configured mapper files, found without importing torch when possible.

`elite list` marks concepts encoded by other mappers than the configured ones ("stale"), the
same test `elite gen` applies before refusing them, but must stay fast and torch-free. So:
- a file whose fingerprint an earlier command computed is looked up in a small cache in the
  library folder (`mapper-fingerprints.json`, keyed by path, size and modification time);
- a safetensors file is hashed here from its raw bytes, exactly as `mappers.fingerprint`
  hashes the loaded tensors;
- a reference `.pt` that no command has loaded yet is unknown (None): unpickling it needs
  torch, which would cost `elite list` seconds; the next `elite add`/`gen` fills the cache;
- an `hf://` setting is the safetensors form the first load converted it to (library's
  models/hub folder, named by the downloaded file's hash), found through the Hugging Face cache
  without network; unknown (None) until a command has downloaded and converted it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from elite_cli.common.config import HF_SCHEME
from elite_cli.model.mapper_files import checkpoint_kind

CACHE_NAME = "mapper-fingerprints.json"
# safetensors dtype codes -> str(torch dtype), the spelling mappers.fingerprint hashes.
_TORCH_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16"}


def _cache_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_cache(home: Path) -> dict[str, str]:
    try:
        data = json.loads((home / CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(home: Path, path: str | Path, fingerprint: str) -> None:
    """Record the fingerprint of a mapper file just loaded; a cache that cannot be written is skipped."""
    try:
        key = _cache_key(Path(path))
        cache = _read_cache(home)
        if cache.get(key) == fingerprint:
            return
        cache[key] = fingerprint
        from elite_cli.library.conceptfile import atomic_write

        atomic_write(home / CACHE_NAME, json.dumps(cache, indent=1, sort_keys=True).encode("utf-8"))
    except OSError:
        pass  # only a speed-up: the next command computes it again


def safetensors_fingerprint(path: Path) -> str | None:
    """mappers.fingerprint of a safetensors file's tensors, from its bytes; None if it is not one."""
    data = path.read_bytes()
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    body = data[8 + size :]
    digest = hashlib.sha256()
    for name in sorted(key for key in header if key != "__metadata__"):
        entry = header[name]
        try:
            dtype = _TORCH_DTYPES[entry["dtype"]]
            start, end = entry["data_offsets"]
            shape = list(entry["shape"])
        except (KeyError, TypeError, ValueError):
            return None
        digest.update(f"{name}|{dtype}|{shape}\n".encode())
        digest.update(body[start:end])
    return "sha256:" + digest.hexdigest()


def mapper_fingerprint(home: Path, path: str | Path, role: str = "global") -> str | None:
    """The fingerprint `elite gen` would compute for this mapper file, or None when it cannot be read
    without torch (a missing file, or a `.pt` no command has loaded since it last changed)."""
    if str(path).startswith(HF_SCHEME):
        from elite_cli.common.config import HUB_MAPPERS_DIR, MODELS_DIR_NAME
        from elite_cli.model.hub import cached_converted_mapper

        converted = cached_converted_mapper(str(path), role, home / MODELS_DIR_NAME / HUB_MAPPERS_DIR)
        if converted is None:
            return None
        path = converted
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    try:
        cached = _read_cache(home).get(_cache_key(path))
        if cached:
            return cached
        if checkpoint_kind(path) != "safetensors":
            return None  # a pickle: only torch reads it, and `elite list` must not import torch
        found = safetensors_fingerprint(path)
    except OSError:
        return None
    if found:
        remember(home, path, found)
    return found


def configured_fingerprints(home: Path, global_mapper: str | None, local_mapper: str | None) -> tuple[str, str] | None:
    """(global, local) fingerprints of the configured mappers, or None when either is not known."""
    if not global_mapper or not local_mapper:
        return None
    found = (mapper_fingerprint(home, global_mapper, "global"), mapper_fingerprint(home, local_mapper, "local"))
    return found if all(found) else None  # type: ignore[return-value]


