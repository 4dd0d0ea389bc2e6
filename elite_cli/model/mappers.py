"""ELITE's global and local mapping networks, and safe loading of their checkpoints.

Both checkpoints are flat state dicts (ELITE_SPEC.md sections 2-3): ten MLPs
`mapping_{i}` / `mapping_patch_{i}` plus, per UNet cross-attention module, key/value
projections `{module}_to_k.weight` / `{module}_to_v.weight` (module path with '.' -> '_').
Our modules keep exactly those names so the reference files load strictly and convert to
safetensors and back bit-exactly. Every size is read from the tensors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from elite_cli.model.concept import NUM_WORDS
from elite_cli.errors import ModelError
from elite_cli.model.mapper_files import checkpoint_kind, require_mapper_file

KV_SUFFIXES = ("_to_k.weight", "_to_v.weight")


def mapping_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> LeakyReLU -> Linear -> LayerNorm -> LeakyReLU -> Linear (indices 0..6)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, out_dim),
    )


def module_key(attention_path: str) -> str:
    """The checkpoint prefix of a UNet attention module: its dotted path with '_' for '.'."""
    return attention_path.replace(".", "_")


class MappingNetwork(nn.Module):
    """The ten MLPs plus the per-layer key/value projections both mappers share."""

    def __init__(self, image_width: int, hidden_width: int, text_width: int, kv_shapes: Mapping[str, tuple[int, int]]):
        super().__init__()
        self.image_width, self.hidden_width, self.text_width = image_width, hidden_width, text_width
        for i in range(NUM_WORDS):
            self.add_module(f"mapping_{i}", mapping_mlp(image_width, hidden_width, text_width))
            self.add_module(f"mapping_patch_{i}", mapping_mlp(image_width, hidden_width, text_width))
        # Registered as direct children named like the reference ('<module>_to_k'), so that
        # state_dict() keys are the reference keys.
        self.kv_modules: list[str] = sorted(kv_shapes)
        for key in self.kv_modules:
            out_features, in_features = kv_shapes[key]
            self.add_module(f"{key}_to_k", nn.Linear(in_features, out_features, bias=False))
            self.add_module(f"{key}_to_v", nn.Linear(in_features, out_features, bias=False))

    def key_value(self, key: str) -> tuple[nn.Linear, nn.Linear]:
        return getattr(self, f"{key}_to_k"), getattr(self, f"{key}_to_v")

    def mapping_modules(self) -> list[nn.Module]:
        """The ten MLPs (what encoding uses; generation only needs the key/value layers)."""
        return [module for name, module in self.named_children() if name.startswith("mapping_")]

    def mapping(self, i: int) -> nn.Module:
        return getattr(self, f"mapping_{i}")

    def mapping_patch(self, i: int) -> nn.Module:
        return getattr(self, f"mapping_patch_{i}")

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], what: str, *, share: bool = False) -> "MappingNetwork":
        """The network holding `state`'s weights: copies in float32, or with share=True the state's own
        tensors in the file's dtype (no second copy: what loading for generation wants)."""
        shapes = infer_shapes(state, what)
        if share:
            with torch.device("meta"):  # no random initial weights to allocate and throw away
                network = cls(*shapes)
        else:
            network = cls(*shapes)
        missing, unexpected = network.load_state_dict(dict(state), strict=False, assign=share)
        if missing or unexpected:  # infer_shapes already checked; this guards its logic
            first = (missing or unexpected)[0]
            raise ModelError(f"{what} does not fit the ELITE layout: {'missing' if missing else 'unexpected'} key '{first}'.")
        return network.eval().requires_grad_(False)


class GlobalMapper(MappingNetwork):
    """CLIP features of the full image -> five word embeddings [B, 5, Dt]."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        words = [
            self.mapping(i)(level[:, :1]) + self.mapping_patch(i)(level[:, 1:]).mean(dim=1, keepdim=True)
            for i, level in enumerate(features)
        ]
        return torch.cat(words, dim=1)


class LocalMapper(MappingNetwork):
    """CLIP features of the object image -> local patch tokens [B, P, Dt] (unmasked)."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [self.mapping(i)(level[:, :1]) + self.mapping_patch(i)(level[:, 1:]) for i, level in enumerate(features)]
        return torch.stack(levels, dim=0).mean(dim=0)


def infer_shapes(state: Mapping[str, torch.Tensor], what: str) -> tuple[int, int, int, dict[str, tuple[int, int]]]:
    """(image width, hidden width, text width, {module key: (out, in)}) from a mapper state dict."""
    first = state.get("mapping_0.0.weight")
    last = state.get("mapping_0.6.weight")
    if first is None or last is None:
        name = "mapping_0.0.weight" if first is None else "mapping_0.6.weight"
        raise ModelError(f"{what} is not an ELITE mapper checkpoint: missing key '{name}'.")
    hidden, image_width = first.shape
    text_width = last.shape[0]
    kv_shapes: dict[str, tuple[int, int]] = {}
    for name, tensor in state.items():
        if name.endswith("_to_k.weight"):
            kv_shapes[name[: -len("_to_k.weight")]] = tuple(tensor.shape)
    expected = MappingNetwork(1, 1, 1, {})  # only for the key list of the ten MLPs
    expected_shapes = {}
    for name, tensor in expected.state_dict().items():
        layer = int(name.split(".")[1])
        if layer in (0,):
            shape = (hidden, image_width) if name.endswith("weight") else (hidden,)
        elif layer in (1, 4):
            shape = (hidden,)
        elif layer == 3:
            shape = (hidden, hidden) if name.endswith("weight") else (hidden,)
        else:  # 6
            shape = (text_width, hidden) if name.endswith("weight") else (text_width,)
        expected_shapes[name] = shape
    for key, shape in kv_shapes.items():
        expected_shapes[f"{key}_to_k.weight"] = shape
        expected_shapes[f"{key}_to_v.weight"] = shape
    for name in expected_shapes:
        if name not in state:
            raise ModelError(f"{what} is missing key '{name}'; is it an ELITE mapper checkpoint?")
    for name, tensor in state.items():
        if name not in expected_shapes:
            raise ModelError(f"{what} has unexpected key '{name}'; is it an ELITE mapper checkpoint?")
        if tuple(tensor.shape) != tuple(expected_shapes[name]):
            raise ModelError(
                f"{what} key '{name}' has shape {list(tensor.shape)} but {list(expected_shapes[name])} is needed."
            )
    for key, (out_features, in_features) in kv_shapes.items():
        if in_features != text_width:
            raise ModelError(f"{what} key '{key}_to_k.weight' reads {in_features}-wide text but the words are {text_width}-wide.")
    return int(image_width), int(hidden), int(text_width), kv_shapes


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted tensor names, dtypes, shapes and bytes: the same for .pt and .safetensors."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{str(tensor.dtype)}|{list(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def _check_tensors(state: object, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise ModelError(f"{what} does not hold a flat dict of tensors; pass a reference mapper .pt or our .safetensors.")
    checked: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ModelError(f"{what} entry {name!r} is not a named tensor; pass a plain state dict of tensors.")
        if not tensor.is_floating_point():
            raise ModelError(f"{what} tensor '{name}' has dtype {tensor.dtype}; mapper weights must be floating point.")
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{what} tensor '{name}' contains NaN or infinite values; the checkpoint is damaged.")
        checked[name] = tensor
    return checked


def owned_copies(state: Mapping[str, torch.Tensor], keep, device, dtype) -> dict[str, torch.Tensor]:
    """`state` with the tensors whose name `keep` accepts copied onto device/dtype, the rest on "meta".

    A tensor read from a safetensors file is a view into the file's whole memory mapping: while any
    one of them lives, every page of the file that was read stays resident (0.19 GB per mapper at
    real size, the ten MLPs included, even after they are dropped). Copies of what the process keeps
    let the mapping go with the state.
    """
    return {name: tensor.to(device=device, dtype=dtype, copy=True) if keep(name) else tensor.to("meta")
            for name, tensor in state.items()}


def load_mapper_state(path: str | Path, what: str = "mapper checkpoint", role: str | None = None) -> dict[str, torch.Tensor]:
    """Read a mapper checkpoint safely: safetensors, or a reference .pt through weights_only loading.

    role: "global" or "local" where the caller knows which mapper it wants. The two have the
    same layout, so only the `mapper` metadata of our safetensors files can tell a swapped
    pair apart; a reference .pt carries no such record.
    """
    path = Path(path)
    label = f"{what} '{path}'"
    require_mapper_file(path, what, role)
    if checkpoint_kind(path) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelError(f"{label} is not a valid safetensors file ({error}).") from None
    else:
        import pickle

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError,
                KeyError, IndexError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if isinstance(error, (KeyError, IndexError)):  # the unpickler met bytes it has no meaning for
                reason = "the data is damaged or not a checkpoint"
            if len(reason) > 120:
                reason = reason[:117].rstrip() + "..."
            raise ModelError(
                f"{label} is not a plain tensor checkpoint and was refused (weights-only loading: {reason})."
            ) from None
    return _check_tensors(state, label)


def save_mapper_state(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a mapper state dict as safetensors, atomically."""
    import os
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from elite_cli.common.paths import usual_file_mode

    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, temp, metadata=metadata or {})
        os.chmod(temp, usual_file_mode())  # after save_file, which writes a new file
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def convert_reference_checkpoint(source: str | Path, destination: str | Path, role: str | None = None) -> str:
    """Convert a reference `global_mapper.pt`/`local_mapper.pt` to safetensors; return its fingerprint.

    The tensors are copied bit-exactly (same names, dtypes and values). role ("global"/"local"),
    when given, is checked against the source's metadata and recorded in the destination's.
    """
    what = f"{role} mapper checkpoint" if role else "reference checkpoint"
    state = load_mapper_state(source, what, role)
    infer_shapes(state, f"{what} '{source}'")
    print_id = fingerprint(state)
    metadata = {"format": "elite-mapper", "fingerprint": print_id, **({"mapper": role} if role else {})}
    save_mapper_state(state, destination, metadata)
    return print_id


def check_against_unet(network: MappingNetwork, unet_kv_shapes: Mapping[str, tuple[int, int]], what: str) -> None:
    """Fail with one sentence naming the first key that does not fit the loaded UNet."""
    for key in sorted(unet_kv_shapes):
        if key not in network.kv_modules:
            raise ModelError(
                f"{what} does not fit the base model: missing key '{key}_to_k.weight' "
                "(was it trained for another Stable Diffusion version?)."
            )
        mine = tuple(network.key_value(key)[0].weight.shape)
        if mine != tuple(unet_kv_shapes[key]):
            raise ModelError(
                f"{what} does not fit the base model: key '{key}_to_k.weight' has shape {list(mine)} but the "
                f"UNet layer needs {list(unet_kv_shapes[key])} (was it trained for another Stable Diffusion version?)."
            )
    for key in network.kv_modules:
        if key not in unet_kv_shapes:
            raise ModelError(
                f"{what} does not fit the base model: unexpected key '{key}_to_k.weight' "
                "(was it trained for another Stable Diffusion version?)."
            )
