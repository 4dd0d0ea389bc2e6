"""The reference's caption templates, and the token-id surgery that gives the global stage
room for all five words. Pure Python (no torch)."""

from __future__ import annotations

# The 27 templates of the reference's datasets.py (Textual Inversion's small ImageNet set).
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

# The placeholder in training captions; any name works, the embedding at its slot is replaced.
CONCEPT = "<concept>"

# Scale-dependent caption openings of the local stage's target augmentation (reference custom_aug).
SMALL_OPENINGS = ("a far away", "very small")
LARGE_OPENINGS = ("zoomed in", "close up")


def caption(template: str, opening: str = "a") -> str:
    """The template with the concept filled in and, for another opening than "a", its first word
    replaced by the opening ("a far away photo of a <concept>").

    The reference writes `opening + text[1:]`, which is right for templates starting with "a "
    and garbles the one starting with "the " ("ahe photo of a S"); we replace the first word,
    and leave the template alone for the plain opening "a".
    """
    text = template.format(CONCEPT)
    if opening == "a":
        return text
    return f"{opening} {text.partition(' ')[2]}"


def insert_word_slots(input_ids: list[int], position: int, extra: int, filler: int) -> list[int]:
    """Insert `extra` copies of `filler` right after `position`, keeping the window length.

    The global stage injects all five words starting at the placeholder: the following tokens
    shift right and the sequence is cut back to its window (ELITE_SPEC.md section 4).
    """
    window = len(input_ids)
    shifted = input_ids[: position + 1] + [filler] * extra + input_ids[position + 1 :]
    return shifted[:window]
