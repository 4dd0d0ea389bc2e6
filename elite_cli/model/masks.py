"""Which object mask a concept picture gets (`elite add --mask FILE|auto|none`, `--object TEXT`).

ELITE's local branch reads only the object; a picture without a mask used to give the whole
picture, background included. Now, in order: a mask file the user gives; else the picture's
transparency; else an automatic mask from the segmenter (elite_cli.model.segment); `--mask none` keeps
the whole picture (a transparent picture's transparency still marks its object).

The automatic mask is written as a PNG (white = object) and from then on is the concept's mask
file like a user's: the library stores it, `reencode` reuses it, its hash identifies the concept's
sources. Nothing here prints: problems raise InputError, advice comes back as warning strings.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elite_cli.errors import InputError

MASK_MODES = ("auto", "none")
# ELITE's training objects covered 2% to 80% of their pictures (the reference's box filter);
# outside that the mappers see something they never learned from.
COVERAGE_RANGE = (0.02, 0.8)
NO_OBJECT = "no object found: pass --mask FILE, --object TEXT or --mask none"
SOURCE_WORDS = {"file": "mask file", "painted": "painted (given as an image, e.g. in `elite ui`)",
                "alpha": "the picture's transparency", "auto": "automatic",
                "none": "none (the whole picture)", "": "not recorded"}


def parse_mask_option(value: str | Path | None) -> str | Path | None:
    """`--mask` as given: None (not given), "auto", "none", or the Path of a mask file."""
    if value is None:
        return None
    text = str(value)
    if text in MASK_MODES:
        return text
    return Path(value)


@dataclass
class ChosenMask:
    """The object mask one picture is encoded and stored with."""

    source: str  # "file", "alpha", "auto" or "none"
    path: Path | None  # the mask file to encode with and store (the user's, or the automatic mask's PNG)
    image_sha256: str
    mask_sha256: str  # "" without a mask file
    coverage: float  # share of the picture that is object (1.0 for the whole picture)
    model: str = ""  # the segmenter, for an automatic mask
    object_text: str = ""  # what it looked for
    warning: str | None = None  # advice when the object is outside COVERAGE_RANGE

    @property
    def provenance(self) -> dict[str, str]:
        """The concept file's mask keys (library/FORMAT.md 2.1)."""
        return {"mask_source": self.source, "mask_model": self.model, "mask_object": self.object_text}


def describe_mask_source(provenance: dict[str, str]) -> str:
    """One line for `elite show`: where a concept's mask came from."""
    source = provenance.get("mask_source", "")
    if source == "auto":
        return f"automatic ({provenance.get('mask_model', '')}, object '{provenance.get('mask_object', '')}')"
    return SOURCE_WORDS.get(source, source)


def coverage_warning(coverage: float, image: Path | str, source: str) -> str | None:
    """Advice when the object covers less than 2% or more than 80% of the picture."""
    low, high = COVERAGE_RANGE
    if source == "none" or low <= coverage <= high:
        return None
    share = f"{coverage * 100:.1f}%" if coverage < 0.1 else f"{coverage * 100:.0f}%"
    if coverage < low:
        fix = "crop the picture closer to the object"
        if source == "auto":
            fix += ", or, if the automatic mask missed it, name it with --object TEXT or pass --mask FILE"
    else:
        fix = "use a picture with more background around the object"
        if source == "auto":
            fix += ", or, if the automatic mask took in the background, name the object with --object TEXT or pass --mask FILE"
    return (f"the object covers {share} of '{image}', outside the {low:.0%}-{high:.0%} ELITE's mappers were trained "
            f"on; {fix}.")


def mask_png(mask: np.ndarray) -> bytes:
    """A bool mask as an 8-bit greyscale PNG, white = object (the same bytes for the same mask)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, format="PNG")
    return buffer.getvalue()


class MaskChooser:
    """Chooses the mask of each picture for one `add`; loads the segmenter only if a picture needs it.

    mask: None (a transparent picture's transparency, else automatic), "auto", "none" or a mask
    file's Path. object_text: what the automatic mask looks for (default: segment.DEFAULT_OBJECT);
    naming it asks for the automatic mask even on a transparent picture. Automatic masks are
    written to a temporary folder that lives as long as this chooser (the library copies them).
    """

    def __init__(self, mask: str | Path | None = None, object_text: str | None = None,
                 segmenter: str = "", device: str = "auto", dtype: str = "auto"):
        from elite_cli.model.segment import DEFAULT_OBJECT, DEFAULT_SEGMENTER

        self.mask = parse_mask_option(mask)
        if object_text is not None and not object_text.strip():
            raise InputError("--object is empty; name the object to find, e.g. --object 'a cat'.")
        if object_text is not None and (isinstance(self.mask, Path) or self.mask == "none"):
            raise InputError("--object names the object for the automatic mask; leave out --mask FILE or --mask none "
                             "to use it.")
        self.object_text = object_text.strip() if object_text else DEFAULT_OBJECT
        self.named = object_text is not None
        self.segmenter_source = segmenter or DEFAULT_SEGMENTER
        self.device, self.dtype = device, dtype
        self._folder: tempfile.TemporaryDirectory | None = None
        self._written = 0

    @property
    def may_segment(self) -> bool:
        """Whether some picture could need the segmenter (to show a spinner while it loads)."""
        return self.mask in (None, "auto")

    def segmenter(self):
        from elite_cli.model.segment import load_segmenter

        return load_segmenter(self.segmenter_source, self.device, self.dtype)

    def choose(self, image: Path | str) -> ChosenMask:
        """Decode `image` (and its mask file), find the object when needed, and say how much of
        the picture it covers. Raises InputError for bad files and for an empty automatic mask."""
        from elite_cli.model.images import load_picture, object_mask

        picture = load_picture(image)
        automatic = self.mask == "auto" or (self.mask is None and (not picture.has_transparency or self.named))
        if not automatic:
            found, mask_sha, source = object_mask(picture, None if self.mask == "none" else self.mask)
            path = self.mask if isinstance(self.mask, Path) else None
            coverage = float(found.mean())
            return ChosenMask(source=source, path=path, image_sha256=picture.sha256, mask_sha256=mask_sha,
                              coverage=coverage, warning=coverage_warning(coverage, image, source))
        from elite_cli.model import segment

        # The threshold is read now, not bound at import: one setting for every caller.
        found = segment.auto_mask(self.segmenter(), picture.rgb, self.object_text, segment.AUTO_MASK_THRESHOLD)
        if not found.any():
            raise InputError(f"{NO_OBJECT} (in '{image}').")
        data = mask_png(found)
        path = self._write(Path(image).stem, data)
        coverage = float(found.mean())
        return ChosenMask(source="auto", path=path, image_sha256=picture.sha256, mask_sha256="sha256:" + hashlib.sha256(data).hexdigest(),
                          coverage=coverage, model=self.segmenter_source, object_text=self.object_text,
                          warning=coverage_warning(coverage, image, "auto"))

    def _write(self, stem: str, data: bytes) -> Path:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="elite-masks-")
        self._written += 1
        path = Path(self._folder.name) / f"{self._written}-{stem}.mask.png"
        path.write_bytes(data)
        return path

    def close(self) -> None:
        """Delete the automatic masks written (the library has its own copies by now)."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> "MaskChooser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
