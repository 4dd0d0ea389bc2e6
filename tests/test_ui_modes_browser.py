"""The "Start from a picture" panel in a real browser (the server, browser and page fixtures of
test_ui_browser.py): upload a picture, paint the region to repaint with the mouse, generate; the
run is in the library's history with the painted region."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_ui_browser import browser, expect, library_session, page, set_number, ui_server  # noqa: F401 (fixtures)


def test_paint_a_region_on_an_uploaded_picture_and_repaint_it(page, ui_server, tmp_path):  # noqa: F811
    picture = tmp_path / "sofa.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    page.get_by_role("tab", name="Generate").click()
    page.get_by_text("Scheduler and size").click()
    expect(page.locator("#width input[type=number]").first).to_be_visible()
    page.locator("#prompt textarea").fill("a red cat")
    for element, value in (("#seed", 5), ("#steps", 2), ("#width", 64), ("#height", 64)):
        set_number(page, element, value)
    page.get_by_text("Start from a picture").click()
    page.locator("#mode-picture input[type=file]").set_input_files(str(picture))
    page.locator("#mode-choice").get_by_text("Repaint the painted region").click()
    canvas = page.locator("#region-editor canvas").first
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    # A stroke across the middle of the picture.
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), box["y"] + box["height"] * 0.5, steps=2)
    page.mouse.up()
    page.locator("#generate").click()
    expect(page.locator("#run-info")).to_contain_text("Made 1 image (seed 5)")

    with library_session(ui_server) as session:
        [image] = session.history()[0].images
        mode = image.parameters["mode"]
        assert mode["strength"] == 1.0 and "inpaint" in mode
        region = np.asarray(Image.open(mode["region"]["path"]))
        assert region.shape == (64, 64) and 0 < (region > 127).mean() < 0.5  # the stroke, not the whole picture
