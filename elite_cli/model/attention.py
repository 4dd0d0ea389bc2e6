"""ELITE's cross-attention as diffusers attention processors (ELITE_SPEC.md section 5).

Installed with `unet.set_attn_processor`; nothing in diffusers is patched. Per-call data (the
local tokens and where each concept's word sits in the prompt) travels in
`cross_attention_kwargs={"elite": LocalInjection(...)}`. diffusers hands cross_attention_kwargs
to self-attention too, so the self-attention processor takes the same named parameter.

The processors are plain classes rather than nn.Modules on purpose: diffusers decides which
keyword arguments a processor accepts from the signature of its `__call__`, and an
nn.Module's `__call__` is `(*args, **kwargs)`, which would make it drop `elite`. The weights they
use belong to the mapper modules, which the model loader moves between devices and dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backend = Literal["sdpa", "xformers", "tiled"]
BACKENDS = ("sdpa", "xformers", "tiled")

# The tiled kernel (tiled_attention) takes attention calls with at least this many keys: Stable
# Diffusion's self-attention at 64x64 and 32x32 latents (4096 and 1024 keys), where it measured
# 1.3-1.6x and 1.2-1.8x faster than PyTorch's fused kernel in bfloat16 (benchmarks/README
# section 10, run 5).
# With the 77 text keys or the 257 local tokens the two are within noise of each other.
TILED_MIN_KEYS = 1024
# Query rows per tile: enough that each matrix product is large, few enough that a tile's
# scores (rows x keys, 4 MiB in bfloat16) stay in the CPU's cache; 512 rows at 4096 keys.
TILE_SCORES = 1 << 21


@dataclass
class LocalInjection:
    """What the cross-attention layers need for one UNet call.

    rows:      [R] batch rows that receive local detail (the conditional half of the batch).
    tokens:    [R, J, P, Dt] local tokens of the concept in slot j of row r.
    positions: [R, J] prompt position of that concept's placeholder word.
    weights:   [R, J] 1.0 for a real slot, 0.0 for padding (rows mentioning fewer concepts).
    llambda:   the spec's lambda: how much local detail to add.
    local_values: when a list, every cross-attention layer appends its local values v_L
        ([R, H, P, D]) to it (local-mapper training regularises their magnitude).
    projections: when a dict, each cross-attention layer keeps in it the keys and values it
        projected from the text and from the local tokens, and reuses them in later UNet calls
        with the same text tensor: across one generation's denoising steps neither changes, so
        projecting them again every step (as diffusers' pipelines do) is wasted work. Only for
        inference with fixed weights; training leaves it None.
    """

    rows: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor
    weights: torch.Tensor
    llambda: float
    local_values: list | None = None
    projections: dict | None = field(default=None, repr=False)


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a broken build raising at import
        return False
    return True


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype | None = None,
                    compiled: bool = False) -> Backend:
    """'auto' picks xformers on CUDA when it imports, the tiled kernel on the CPU in bfloat16 (unless
    the UNet is compiled: torch.compile would unroll the kernel's loops into one huge graph) and
    PyTorch SDPA everywhere else."""
    if requested == "auto":
        if device.type == "cuda" and xformers_available():
            return "xformers"
        return "tiled" if device.type == "cpu" and dtype == torch.bfloat16 and not compiled else "sdpa"
    if requested not in BACKENDS:
        raise ValueError(f"`attention` must be 'auto', 'sdpa', 'xformers' or 'tiled' but is {requested!r}.")
    if requested == "xformers" and (device.type != "cuda" or not xformers_available()):
        from elite_cli.errors import InputError

        raise InputError("xformers attention needs a CUDA device and an importable xformers; use 'sdpa' or 'auto'.")
    return requested  # type: ignore[return-value]


def attend(query, key, value, scale: float, backend: Backend, mask=None) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, H, L, D] tensors, by the chosen kernel."""
    if backend == "xformers":
        import xformers.ops as xops

        bias = None
        if mask is not None:
            # xformers wants every bias stride but the last to be a multiple of 8: pad, then slice.
            length = key.shape[2]
            padded = torch.zeros(*query.shape[:3], (length + 7) // 8 * 8, dtype=query.dtype, device=query.device)
            padded[..., :length] = mask.expand(*query.shape[:3], length)
            bias = padded[..., :length]
        out = xops.memory_efficient_attention(
            query.transpose(1, 2).contiguous(),
            key.transpose(1, 2).contiguous(),
            value.transpose(1, 2).contiguous(),
            attn_bias=bias,
            scale=scale,
        )
        return out.transpose(1, 2)
    if backend == "tiled" and mask is None and key.shape[2] >= TILED_MIN_KEYS and not (
            torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return tiled_attention(query, key, value, scale)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


def tiled_attention(query, key, value, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, H, L, D] tensors, one head and one block of query rows at a
    time, with plain matrix products. Inference only (it writes into its output in place).

    Why it exists: in bfloat16 on the CPU, PyTorch's fused attention kernel is no faster than in
    float32 (it is built around small matrix products of head_dim, 40 at Stable Diffusion's 64x64
    level), while oneDNN's bfloat16 matrix products are twice as fast as float32 ones. Here each
    tile's scores come from one product (the scale applied inside it, to the float32 sums) and
    stay in the cache for the softmax and the product with the values.

    What it changes: the scores are rounded to bfloat16 before the softmax, where the fused kernel
    keeps them in float32; the images stay as close to float32 ones as the fused kernel's (measured
    in benchmarks/README section 10, run 5, and held by tests/test_precision.py's bound).
    """
    batch, heads, length, _ = query.shape
    keys = key.shape[2]
    rows = min(length, max(256, TILE_SCORES // keys))
    out = query.new_empty(batch, length, heads, value.shape[-1])  # [B, L, H, D]: merging heads is then free
    scores = query.new_empty(rows, keys)
    for sample in range(batch):
        for head in range(heads):
            keys_t, values = key[sample, head].transpose(0, 1), value[sample, head]
            queries, head_out = query[sample, head], out[sample, :, head]
            for start in range(0, length, rows):
                block = queries[start:start + rows]
                tile = scores[:block.shape[0]]
                torch.addmm(tile, block, keys_t, beta=0, alpha=scale, out=tile)
                head_out[start:start + rows] = torch.mm(tile.softmax(dim=-1), values)
    return out.transpose(1, 2)


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = tensor.shape
    return tensor.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _prepare_mask(attn, attention_mask, key_length: int, batch: int):
    if attention_mask is None:
        return None
    attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch)
    return attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])


class EliteSelfAttnProcessor:
    """Plain self-attention (attn1), untouched by ELITE, on the chosen kernel."""

    def __init__(self, backend: Backend = "sdpa"):
        self.backend = backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, elite=None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch = hidden_states.shape[0]
        mask = _prepare_mask(attn, attention_mask, context.shape[1], batch)
        query = _heads(attn.to_q(hidden_states), attn.heads)
        key = _heads(attn.to_k(context), attn.heads)
        value = _heads(attn.to_v(context), attn.heads)
        out = _merge_heads(attend(query, key, value, attn.scale, self.backend, mask)).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class EliteCrossAttnProcessor:
    """Cross-attention (attn2) with ELITE's global K/V copies and local injection.

    1. Text attention with the global mapper's to_k/to_v copies, for every row (both
       guidance branches).
    2. For rows in `elite.rows`, per concept slot j: attention over that concept's local
       tokens with the local mapper's to_k/to_v, scaled per query by m = A[..., p_j] / max(A[..., p_j])
       (the max taken per sample over heads and queries) and by lambda, added to 1.
    Since m scales whole rows of the local attention matrix, (A_L * m) v_L = m * (A_L v_L):
    the local attention runs on the fused kernel and only the 77-wide text attention
    column of the placeholder is computed explicitly.
    """

    def __init__(self, to_k_global: nn.Linear, to_v_global: nn.Linear, to_k_local: nn.Linear, to_v_local: nn.Linear,
                 backend: Backend = "sdpa"):
        self.to_k_global, self.to_v_global = to_k_global, to_v_global
        self.to_k_local, self.to_v_local = to_k_local, to_v_local
        self.backend = backend

    def placeholder_weight(self, query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        """m for every slot: [R, J, H, N, 1], each normalised by its per-sample maximum."""
        # Softmax in float32: these are attention probabilities over only 77 keys, and the
        # division by their maximum is sensitive to fp16 rounding.
        probs = (torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale).softmax(dim=-1)
        rows, heads, queries, _ = probs.shape
        index = positions.to(probs.device).view(rows, 1, 1, -1).expand(rows, heads, queries, positions.shape[1])
        column = probs.gather(-1, index)  # [R, H, N, J]
        column = column / column.amax(dim=(1, 2), keepdim=True)
        return column.permute(0, 3, 1, 2).unsqueeze(-1)

    def text_projections(self, attn, encoder_hidden_states, elite) -> "_Projections":
        """The global keys and values of the text, projected once per text tensor when `elite` keeps them."""
        kept = elite.projections if elite is not None else None
        projections = kept.get(self) if kept is not None else None
        if projections is None or projections.text is not encoder_hidden_states:
            key = _heads(self.to_k_global(encoder_hidden_states), attn.heads)
            value = _heads(self.to_v_global(encoder_hidden_states), attn.heads)
            projections = _Projections(encoder_hidden_states, key, value)
            if kept is not None:
                kept[self] = projections
        return projections

    def local_projections(self, attn, elite, slot: int, device, dtype, projections: "_Projections"):
        """Keys and values of slot `slot`'s local tokens (kept beside the text's when `elite` keeps them)."""
        if elite.projections is not None and slot in projections.local:
            return projections.local[slot]
        tokens = elite.tokens[:, slot].to(device=device, dtype=dtype)
        local = _heads(self.to_k_local(tokens), attn.heads), _heads(self.to_v_local(tokens), attn.heads)
        if elite.projections is not None:
            projections.local[slot] = local
        return local

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, elite=None):
        if encoder_hidden_states is None:
            raise ValueError("EliteCrossAttnProcessor is for cross-attention layers but got no `encoder_hidden_states`.")
        batch = hidden_states.shape[0]
        mask = _prepare_mask(attn, attention_mask, encoder_hidden_states.shape[1], batch)
        query = _heads(attn.to_q(hidden_states), attn.heads)
        projections = self.text_projections(attn, encoder_hidden_states, elite)
        key, value = projections.key, projections.value
        out = attend(query, key, value, attn.scale, self.backend, mask)
        if elite is not None and elite.rows.numel():
            rows = elite.rows.to(out.device)
            row_query = query.index_select(0, rows)
            weight = self.placeholder_weight(row_query, key.index_select(0, rows), elite.positions, attn.scale)
            local_out = None
            for slot in range(elite.tokens.shape[1]):
                local_key, local_value = self.local_projections(attn, elite, slot, query.device, query.dtype, projections)
                if elite.local_values is not None:
                    elite.local_values.append(local_value)
                local = attend(row_query, local_key, local_value, attn.scale, self.backend)
                gain = (elite.weights[:, slot].to(out.device, torch.float32) * elite.llambda).view(-1, 1, 1, 1)
                added = (weight[:, slot] * gain * local.float()).to(row_query.dtype)
                local_out = added if local_out is None else local_out + added
            # In place where nothing needs the attention's output for a backward pass (a copy of it less).
            out = out.index_add(0, rows, local_out) if torch.is_grad_enabled() else out.index_add_(0, rows, local_out)
        out = _merge_heads(out).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


@dataclass
class _Projections:
    """One cross-attention layer's keys and values for one text tensor, and for each local slot."""

    text: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    local: dict = field(default_factory=dict)


def cross_attention_modules(unet) -> dict[str, nn.Module]:
    """{dotted module path: Attention} for every cross-attention layer of a UNet."""
    return {
        name: module
        for name, module in unet.named_modules()
        if getattr(module, "is_cross_attention", False) and hasattr(module, "to_k")
    }


def install_elite_processors(unet, global_mapper, local_mapper, backend: Backend) -> None:
    """Give every attn2 an EliteCrossAttnProcessor and every other attention the self processor."""
    from elite_cli.model.mappers import module_key

    cross = cross_attention_modules(unet)
    processors = {}
    for processor_name in unet.attn_processors:
        module_path = processor_name.rsplit(".processor", 1)[0]
        if module_path in cross:
            key = module_key(module_path)
            to_k_global, to_v_global = global_mapper.key_value(key)
            to_k_local, to_v_local = local_mapper.key_value(key)
            processors[processor_name] = EliteCrossAttnProcessor(to_k_global, to_v_global, to_k_local, to_v_local, backend)
        else:
            processors[processor_name] = EliteSelfAttnProcessor(backend)
    unet.set_attn_processor(processors)
