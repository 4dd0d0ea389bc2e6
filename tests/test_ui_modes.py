"""The Generate page's "Start from a picture" panel (elite_cli/ui/modes.py) through the UI's actions:
paint a region on an uploaded picture and repaint it; the run lands in History and is made again."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from elite_cli.ui.modes import FOLLOW_EDGES, FROM_PROMPT, REPAINT, START_FROM
from ui_support import actions  # noqa: F401  (a fixture)

FAST = dict(steps=2, width=64, height=64)


@pytest.fixture
def upload(tmp_path):
    """A picture as Gradio hands an upload over: a temporary file that may vanish later."""
    path = tmp_path / "gradio-upload" / "sofa.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def painted(box=(8, 16, 40, 48)):
    layer = np.zeros((64, 64, 4), dtype=np.uint8)
    left, top, right, bottom = box
    layer[top:bottom, left:right] = (255, 45, 111, 255)
    return {"background": None, "layers": [layer], "composite": None}  # the editor's value, as Gradio sends it


def finished(updates):
    last = [update for update in updates if update.result or update.error][-1]
    assert last.error is None, last.error
    return last.result


def test_repainting_a_painted_region_lands_in_history_and_is_made_again(actions, upload, elite_home):
    result = finished(actions.generate("a red cat", seed=4, **FAST, source=(REPAINT, str(upload), painted(), 1.0, 1.0)))
    [image] = result.images
    mode = image.parameters["mode"]
    kept = elite_home / "sources"
    assert mode["inpaint"]["path"].startswith(str(kept)) and mode["region"]["path"].startswith(str(kept))
    region = np.asarray(Image.open(mode["region"]["path"]))
    assert region[16:48, 8:40].min() == 255 and region.sum() == 255 * 32 * 32  # white where painted
    plain = finished(actions.generate("a red cat", seed=4, **FAST, source=(FROM_PROMPT, str(upload), None, 1.0, 1.0)))
    assert "mode" not in plain.images[0].parameters

    upload.unlink()  # the browser's upload is gone; the library kept its copy
    row = next(row for row in actions.history() if row.entry.run_id == result.run_id)
    original = np.asarray(Image.open(row.path))
    row.path.rename(row.path.with_suffix(".moved"))  # made again from the history row alone
    [remade] = finished(actions.make_again(row.entry)).images
    assert np.array_equal(np.asarray(Image.open(remade.path)), original)


@pytest.mark.parametrize("choice, source_painted, expected", [
    (REPAINT, None, "nothing is painted"),
    (START_FROM, "missing", "there is no picture to start from"),
])
def test_panel_mistakes_are_one_message(actions, upload, choice, source_painted, expected):
    picture = None if source_painted == "missing" else str(upload)
    updates = list(actions.generate("a red cat", **FAST, source=(choice, picture, source_painted, 0.8, 1.0)))
    assert len(updates) == 1 and updates[0].error.startswith("Error: ") and expected in updates[0].error


def test_start_from_and_follow_edges_reach_the_api(actions, upload, tiny_models, tmp_path, monkeypatch):
    from elite_cli.model.tiny_modes import build_tiny_mode_models

    modes = build_tiny_mode_models(tmp_path / "modes", tiny_models.base_model)
    monkeypatch.setenv("ELITE_CONTROLNET_CANNY", str(modes.controlnet_canny))
    started = finished(actions.generate("a red cat", seed=4, **FAST, source=(START_FROM, str(upload), None, 0.5, 1.0)))
    assert started.images[0].parameters["mode"]["strength"] == 0.5 and "init_image" in started.images[0].parameters["mode"]
    followed = finished(actions.generate("a red cat", seed=4, **FAST, source=(FOLLOW_EDGES, str(upload), None, 0.8, 0.7)))
    control = followed.images[0].parameters["mode"]
    assert control["control"][0]["kind"] == "canny" and control["control_scale"] == 0.7
