"""Load a diffusers model while converting it to another dtype, one tensor at a time.

Why: `from_pretrained(torch_dtype=...)` maps the whole safetensors file and keeps every tensor of
it (views of the mapping) until the model is built, so while a float32 UNet loads as bfloat16,
its 3.4 GB of file pages and the 1.7 GB of converted weights are resident together: that moment
is the peak memory of a bfloat16 `elite gen` on the CPU. Reading each tensor with plain file reads
and converting it at once keeps one float32 tensor (59 MB at most) beside the converted weights.
The weights are the same numbers: each tensor is converted by `Tensor.to(dtype)`, as diffusers
does. Anything this reader does not expect (another layout, names or shapes that are not the
model's, a damaged file) returns None, and the caller loads with from_pretrained, which says
what is wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
LARGEST_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def read_header(handle, size: int) -> tuple[dict, int] | None:
    """A safetensors file's header ({name: entry}, without `__metadata__`) and where its data
    starts, read from an open file of `size` bytes; None when the header does not read."""
    header_length = int.from_bytes(handle.read(8), "little")
    if not 0 < header_length <= min(LARGEST_HEADER, size - 8):
        return None
    header = json.loads(handle.read(header_length))
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    return header, 8 + header_length


def held_dtypes(header: dict) -> set:
    """The dtypes a header's tensors are stored in (None for one elite does not convert)."""
    return {SAFETENSORS_DTYPES.get(entry.get("dtype")) for entry in header.values()}


def converted_state(file: Path, dtype: torch.dtype, expected: dict[str, tuple[int, ...]]) -> dict | None:
    """{name: tensor in dtype} for a safetensors file holding exactly `expected` (name: shape), or
    None when the file is not that, or holds nothing to convert (then mapping it costs nothing extra)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            read = read_header(handle, size)
            if read is None:
                return None
            header, data_start = read
            if set(header) != set(expected) or held_dtypes(header) == {dtype}:
                return None
            state = {}
            for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                source, shape = SAFETENSORS_DTYPES.get(entry["dtype"]), tuple(entry["shape"])
                begin, end = entry["data_offsets"]
                if (source is None or shape != expected[name] or not 0 <= begin <= end
                        or end - begin != math.prod(shape) * source.itemsize or data_start + end > size):
                    return None
                raw = bytearray(end - begin)
                handle.seek(data_start + begin)
                if handle.readinto(raw) != len(raw):
                    return None
                tensor = torch.frombuffer(raw, dtype=source) if raw else torch.empty(0, dtype=source)
                state[name] = tensor.view(shape).to(dtype)
                del raw, tensor  # before the next tensor is read: one float32 tensor at a time
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return state


def header_dtypes(file: Path) -> set:
    """The dtypes a safetensors file holds (empty when its header does not read): whether there is
    anything to convert, known before the model is built."""
    try:
        with open(file, "rb") as handle:
            read = read_header(handle, file.stat().st_size)
        return held_dtypes(read[0]) if read is not None else set()
    except (OSError, ValueError, AttributeError):
        return set()


def load_converting(model_class, folder: str, *, torch_dtype: torch.dtype, variant: str | None = None, **kwargs):
    """`model_class.from_pretrained(folder, torch_dtype=..., variant=...)`, with the same weights,
    built tensor by tensor where the folder holds one safetensors file to convert (see above)."""
    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    file = Path(folder) / name
    if file.is_file() and header_dtypes(file) - {torch_dtype}:
        try:
            config = model_class.load_config(folder, **kwargs)
            with torch.device("meta"):
                model = model_class.from_config(config)
        except (OSError, ValueError, TypeError):
            model = None
        if model is not None and not any(True for _ in model.buffers()):
            state = converted_state(file, torch_dtype, {key: tuple(value.shape) for key, value in model.state_dict().items()})
            if state is not None:
                model.load_state_dict(state, strict=True, assign=True)
                model.register_to_config(_name_or_path=folder)  # as from_pretrained records it
                return model.eval()
    variant_argument = {"variant": variant} if variant else {}
    return model_class.from_pretrained(folder, torch_dtype=torch_dtype, **variant_argument, **kwargs)
