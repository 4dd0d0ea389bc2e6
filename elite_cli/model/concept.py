"""The in-memory form of an encoded concept, shared by the encoder, generator and library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from elite_cli.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily by the modules that compute with it
    import torch

# How many words the global mapper produces (one per CLIP feature level); w0 is the primary.
NUM_WORDS = 5
# How a picture is made square before the spec's resize (elite_cli.model.images.prepare_image):
# - "auto": a square picture is used whole, exactly as the reference does (ELITE_SPEC.md section 1);
#   a non-square one (which the reference never takes) is cut to a square around the object, or
#   to the centre square without a mask. This is elite's addition.
# - "object": the tight square around the object on any picture.
CROP_MODES = ("auto", "object")
DEFAULT_CROP = "auto"
# The version of that preprocessing, recorded in every concept (library/FORMAT.md, `preprocessing`).
# 1: every picture cut to the square around its object (elite before 0.2; a square picture with a
#    mask then gave another concept than the reference's). 2: CROP_MODES above.
# Here rather than in images.py so that `elite list` can tell stale concepts without numpy.
PREPROCESSING_VERSION = 2


@dataclass
class Concept:
    """One encoded picture.

    words: [5, Dt] word embeddings, w0 (the primary word used at generation) first.
    local: [P, Dt] local patch tokens, already multiplied by the mask (P = grid * grid).
    mask:  [grid, grid] object mask on the patch grid, 1.0 = object, 0.0 = background.
    provenance: string metadata: which mappers, base model and image encoder made it, and
        the sha256 of the source image and mask, and how the picture was prepared. Keys (all
        optional at this level): global_mapper, local_mapper, base_model, image_encoder,
        image_sha256, mask_sha256, preprocessing (elite_cli.model.images.PREPROCESSING_VERSION as a
        string; "1" for concepts made before it was recorded), crop (elite_cli.model.images.CROP_MODES).
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


def refuse_stale(concepts: Iterable[tuple[str, str, Concept]], global_fingerprint: str, local_fingerprint: str) -> None:
    """Fail when a concept was encoded by other mapper weights than the loaded ones.

    concepts: (name as the user wrote it, library name to re-encode, concept). Mixing a concept
    with mappers it was not made by gives wrong images (and wrong scores) without any error.
    """
    current = (global_fingerprint, local_fingerprint)
    for name, library_name, concept in concepts:
        provenance = concept.provenance or {}
        if (provenance.get("global_mapper"), provenance.get("local_mapper")) != current:
            raise InputError(
                f"<{name}> was encoded with other mapper checkpoints than the configured ones; "
                f"run `elite reencode {library_name}` or pass --allow-stale."
            )


def outdated_preprocessing_warnings(concepts: Iterable[tuple[str, str, Concept]]) -> list[str]:
    """One warning line per concept whose picture was prepared by an older elite.

    Such a concept still works (gen does not refuse it), but it is not the concept `add` makes now.
    """
    warnings = []
    for name, library_name, concept in concepts:
        version = (concept.provenance or {}).get("preprocessing", "1")
        if not version.isdigit() or int(version) < PREPROCESSING_VERSION:
            warnings.append(f"Warning: <{name}> was encoded by an older elite that cropped square pictures; "
                            f"run `elite reencode {library_name}` for the concept the reference makes.")
    return warnings
