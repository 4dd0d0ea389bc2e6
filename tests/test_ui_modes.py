"""The Generate page's "Start from a picture" panel (elite_cli/ui/modes.py) through the UI's actions:
paint a region on an uploaded picture and repaint it; the run lands in History and is made again, and
"Edit these settings" puts its picture, region and strength back in the panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import pixels
from elite_cli.ui.modes import FOLLOW_EDGES, FROM_PROMPT, REPAINT, START_FROM, PanelSettings, panel_settings, region_layer
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


def again_from_the_form(actions, reused):
    """Generate as the page does after "Edit these settings": the form's values and the panel's."""
    job, panel = reused.job, reused.panel
    painted_back = None if panel.region is None else {"background": None, "layers": [panel.region], "composite": None}
    source = (panel.choice, None if panel.picture is None else str(panel.picture), painted_back, panel.strength,
              panel.control_scale)
    return finished(actions.generate(job.prompt, negative_prompt=job.negative_prompt, seed=job.seed, steps=job.steps,
                                     guidance=job.guidance_scale, lambda_=job.llambda, scheduler=job.scheduler,
                                     width=job.width, height=job.height, source=source))


def history_entry(actions, result):
    return next(row.entry for row in actions.history() if row.entry.run_id == result.run_id)


def test_edit_these_settings_puts_the_picture_and_region_back_and_makes_the_same_image(actions, upload):
    first = finished(actions.generate("a red cat", seed=4, **FAST, source=(REPAINT, str(upload), painted(), 0.75, 1.0)))
    upload.unlink()  # the browser's upload is gone; the panel gets the library's copy
    reused = actions.reuse_settings(history_entry(actions, first))
    panel = reused.panel
    assert reused.message == "" and panel.problem == ""
    assert (panel.choice, panel.strength) == (REPAINT, 0.75)
    assert panel.picture == Path(first.images[0].parameters["mode"]["inpaint"]["path"])
    assert panel.region.shape == (64, 64, 4) and np.array_equal(panel.region, painted()["layers"][0])
    assert (reused.job.seed, reused.job.steps, reused.job.width) == (4, 2, 64)
    again = again_from_the_form(actions, reused)
    assert again.images[0].parameters["mode"] == first.images[0].parameters["mode"]  # the same kept files
    assert pixels(again.images[0].path) == pixels(first.images[0].path)


def test_edit_these_settings_puts_back_start_from_and_follow_edges(actions, upload, tiny_models, tmp_path,
                                                                   monkeypatch):
    from elite_cli.model.tiny_modes import build_tiny_mode_models

    modes = build_tiny_mode_models(tmp_path / "modes", tiny_models.base_model)
    monkeypatch.setenv("ELITE_CONTROLNET_CANNY", str(modes.controlnet_canny))
    for choice, strength, scale in ((START_FROM, 0.5, 1.0), (FOLLOW_EDGES, 0.8, 0.7)):
        first = finished(actions.generate("a red cat", seed=4, **FAST, source=(choice, str(upload), None, strength, scale)))
        reused = actions.reuse_settings(history_entry(actions, first))
        assert reused.message == "" and reused.panel.choice == choice and reused.panel.region is None
        assert reused.panel.strength == strength if choice == START_FROM else reused.panel.control_scale == scale
        assert pixels(again_from_the_form(actions, reused).images[0].path) == pixels(first.images[0].path)


@pytest.mark.parametrize("damage, reason", [("unlink", "is gone"), ("rewrite", "has changed since")])
def test_a_source_picture_gone_or_changed_leaves_the_panel_without_it_and_says_why(actions, upload, damage, reason):
    first = finished(actions.generate("a red cat", seed=4, **FAST, source=(REPAINT, str(upload), painted(), 1.0, 1.0)))
    kept = Path(first.images[0].parameters["mode"]["inpaint"]["path"])
    kept.unlink() if damage == "unlink" else kept.write_bytes(Path(first.images[0].parameters["mode"]["region"]["path"])
                                                               .read_bytes())
    reused = actions.reuse_settings(history_entry(actions, first))
    assert reused.message.startswith("Error: the settings are back but not the picture: ")
    assert reason in reused.message and str(kept) in reused.message and "\n" not in reused.message
    panel = reused.panel
    assert (panel.choice, panel.strength, panel.picture, panel.region) == (REPAINT, 1.0, None, None)
    assert reused.job.seed == 4 and reused.job.prompt == "a red cat"


def test_a_text_to_image_row_resets_the_panel(actions):
    first = finished(actions.generate("a red cat", seed=4, **FAST))
    reused = actions.reuse_settings(history_entry(actions, first))
    assert reused.message == "" and reused.panel == PanelSettings()
    assert reused.panel.choice == FROM_PROMPT and reused.panel.picture is None


def test_runs_the_panel_cannot_hold_are_said_so(upload, tmp_path):
    """Runs of `elite gen` with options the panel has no control for: the picture is not put back."""
    from elite_cli.model.mode_options import Control, ImageMode, SourcePicture, file_sha256

    source = SourcePicture(str(upload), file_sha256(upload))
    for mode, said in ((ImageMode(controls=(Control("canny", source, "cn", is_map=True),)), "--control-image-is-map"),
                       (ImageMode(inpaint=source, region_object="the cushion"), "--region auto --object 'the cushion'"),
                       (ImageMode(init_image=source, controls=(Control("canny", source, "cn"),)), "more than one picture")):
        panel = panel_settings(mode)
        assert said in panel.problem and "'Make it again' repeats" in panel.problem
        assert panel.picture is None and panel.choice == FROM_PROMPT
    region = tmp_path / "twice.png"
    Image.fromarray(np.kron(np.asarray(Image.fromarray(painted()["layers"][0][..., 3])), np.ones((2, 2), np.uint8))).save(region)
    layer = region_layer(region, upload)  # a region of the picture's aspect ratio, at the picture's size
    assert np.array_equal(layer, painted()["layers"][0])
