"""The in-memory form of an encoded concept, shared by the encoder, generator and library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily by the modules that compute with it
    import torch

# How many words the global mapper produces (one per CLIP feature level); w0 is the primary.
NUM_WORDS = 5


@dataclass
class Concept:
    """One encoded picture.

    words: [5, Dt] word embeddings, w0 (the primary word used at generation) first.
    local: [P, Dt] local patch tokens, already multiplied by the mask (P = grid * grid).
    mask:  [grid, grid] object mask on the patch grid, 1.0 = object, 0.0 = background.
    provenance: string metadata: which mappers, base model and image encoder made it, and
        the sha256 of the source image and mask. Keys (all optional at this level):
        global_mapper, local_mapper, base_model, image_encoder, image_sha256, mask_sha256.
    """

    words: "torch.Tensor"
    local: "torch.Tensor"
    mask: "torch.Tensor"
    provenance: dict[str, str] = field(default_factory=dict)
    name: str | None = None

    @property
    def primary_word(self) -> "torch.Tensor":
        """w0, shape [Dt]."""
        return self.words[0]

    @property
    def text_width(self) -> int:
        return int(self.words.shape[-1])

    @property
    def grid(self) -> int:
        return int(self.mask.shape[-1])
