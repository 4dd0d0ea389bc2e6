"""The sample pictures in library/samples: small, with matching masks and recorded licences."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library_support import SAMPLES

NAMES = ["chelsea", "coffee", "astronaut"]


@pytest.mark.parametrize("name", NAMES)
def test_sample_has_a_matching_binary_mask(name):
    image = Image.open(SAMPLES / f"{name}.png")
    mask = np.asarray(Image.open(SAMPLES / f"{name}_mask.png"))
    assert max(image.size) <= 512 and image.mode == "RGB"
    assert mask.shape == (image.size[1], image.size[0])
    assert set(np.unique(mask)) == {0, 255}
    assert 0.2 < (mask == 255).mean() < 0.9  # the object, not the whole frame


def test_every_sample_has_its_licence_recorded():
    licences = (SAMPLES / "LICENSES.md").read_text()
    for name in NAMES:
        assert f"`{name}.png`" in licences
    assert "CC0" in licences and "public domain" in licences
