"""What the web UI's controls do (elite_cli/ui/actions.py), called as the page calls them but
without a browser: a real API session on the tiny models, a real library, real PNGs."""

from __future__ import annotations

import io
import socket
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from elite_cli.api import Session
from elite_cli.ui.actions import (MASK_AUTO, MASK_FILE, MASK_NONE, MASK_PAINT, insert_placeholder, painted_mask,
                                  describe, parse_tags)
from elite_cli.ui.server import check_port, is_loopback, parse_auth
from elite_cli.ui.worker import SessionWorker
from ui_support import actions  # noqa: F401  (a fixture)

SAMPLES = REPO / "library" / "samples"
FAST = dict(steps=2, width=64, height=64)


def painted_layer(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """An RGBA paint layer as the editor sends it: transparent, with a painted rectangle."""
    layer = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    left, top, right, bottom = box
    layer[top:bottom, left:right] = (255, 45, 111, 255)
    return layer


def test_painted_layers_become_the_mask_at_the_pictures_size():
    small = painted_layer((50, 40), (10, 10, 20, 20))
    mask = painted_mask([small], size=(100, 80))
    assert mask.shape == (80, 100) and mask.dtype == bool
    assert mask[25, 25] and not mask[5, 5] and mask.sum() == 20 * 20
    assert painted_mask([np.zeros((40, 50, 4), dtype=np.uint8)]) is None
    assert painted_mask(None) is None


def test_prompt_and_tag_helpers():
    assert insert_placeholder("", "mycat") == "<mycat>"
    assert insert_placeholder("<mycat> and ", "mydog") == "<mycat> and <mydog>"
    assert parse_tags(" pets, cats  indoor ") == ["pets", "cats", "indoor"]


def test_add_with_a_painted_mask_then_rename_tag_remove(actions):
    picture = str(SAMPLES / "chelsea.png")
    with Image.open(picture) as opened:
        size = opened.size
    layer = painted_layer(size, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    outcome = actions.add_concept(picture, MASK_PAINT, None, [layer], "", "pets cats")
    assert outcome.ok, outcome.message
    assert outcome.message == "Added <chelsea> (tags: cats, pets); use it in a prompt as <chelsea>."
    [card] = actions.concept_cards()
    assert (card.name, card.tags, card.stale) == ("chelsea", ("cats", "pets"), False)
    assert card.thumbnail.is_file()
    stored = actions.worker.call(lambda session: session.concept("chelsea"))
    # The painted mask is stored as the concept's mask, as `elite add --mask` would store a file,
    # and recorded as painted (it said "mask file").
    assert stored.mask_sha256 and stored.mask_path and stored.mask_path.is_file()
    with Image.open(stored.mask_path) as mask:
        assert mask.size == size
    assert actions.worker.call(lambda session: session.mask_origin("chelsea"))["mask_source"] == "painted"
    details = actions.concept_details("chelsea")
    assert "mask: painted" in details.markdown and "tags: cats, pets" in details.markdown
    assert details.picture == stored.preview_path and details.picture.is_file()

    assert actions.set_tags("chelsea", "cats, indoor").message == "<chelsea> tags: cats, indoor."
    outcome, name = actions.rename("chelsea", "kitty")
    assert (outcome.ok, name) == (True, "kitty")
    outcome, name = actions.rename("kitty", "not a name")
    assert not outcome.ok and outcome.message.startswith("Error: concept name 'not a name' is not valid") and name == "kitty"
    assert actions.remove("kitty").message == "Removed <kitty> from the library."
    assert actions.concept_cards() == []


@pytest.mark.parametrize("mode, mask, painted, expected", [
    (MASK_NONE, None, None, "Error: image 'broken.png' is not an image PIL can read; use PNG, JPEG or WebP."),
    (MASK_PAINT, None, [np.zeros((4, 4, 4), dtype=np.uint8)], "Error: image 'broken.png' is not an image PIL can read"),
    (MASK_FILE, None, None, "Error: there is no mask file; upload one (white = object)"),
])
def test_a_bad_upload_is_one_message_and_nothing_is_stored(actions, tmp_path, mode, mask, painted, expected):
    broken = tmp_path / "upload-copy" / "broken.png"
    broken.parent.mkdir()
    broken.write_text("not a picture")
    outcome = actions.add_concept(str(broken), mode, mask, painted, "", "", {str(broken): "broken.png"})
    assert not outcome.ok and outcome.message.startswith(expected), outcome.message
    assert "\n" not in outcome.message and outcome.message.count("Error:") == 1
    assert actions.concept_cards() == []
    assert actions.check_picture(str(broken)).ok is False


def test_nothing_painted_is_refused(actions):
    outcome = actions.add_concept(str(SAMPLES / "chelsea.png"), MASK_PAINT, None, [np.zeros((8, 8, 4), np.uint8)], "", "")
    assert outcome.message.startswith("Error: nothing is painted on the picture")
    assert "'Find it automatically'" in outcome.message  # the other ways to mark the object are named
    assert actions.concept_cards() == []


def test_generate_reports_steps_and_images_then_history_makes_one_again(actions):
    assert actions.add_concept(str(SAMPLES / "chelsea.png"), MASK_FILE, str(SAMPLES / "chelsea_mask.png"),
                               None, "", "").ok
    updates = list(actions.generate("<chelsea> on the beach", n=2, seed=11, lambda_=0.6, **FAST))
    steps = [update.step for update in updates if update.step]
    images = [update.image for update in updates if update.image]
    assert steps[:2] == [(1, 2), (2, 2)]
    assert sorted(image.seed for image in images) == [11, 12]
    result = updates[-1].result
    assert result is not None and sorted(result.paths) == sorted(image.path for image in images)

    rows = actions.history()
    assert [row.cells[1] for row in rows] == ["<chelsea> on the beach"] * 2
    row = next(row for row in rows if row.entry.seed == 12)
    assert row.cells[2:6] == [12, 2, 5.0, 0.6] and row.cells[7] == "64x64"
    assert "lambda 0.6," in describe(row.entry)
    # Made again from the history row (its PNG moved away): the same pixels.
    original = np.asarray(Image.open(row.path))
    row.path.rename(row.path.with_suffix(".moved"))
    again = [update for update in actions.make_again(row.entry) if update.result or update.error]
    assert again[-1].error is None, again[-1].error
    [remade] = again[-1].result.images
    assert remade.seed == 12 and np.array_equal(np.asarray(Image.open(remade.path)), original)
    assert actions.history()[0].cells[5] == 0.6  # made again with the run's lambda, not the default


def test_the_automatic_mask_is_previewed_then_added_with_its_object(actions, tmp_path):
    picture = str(SAMPLES / "coffee.png")
    drawn, outcome = actions.preview_automatic_mask(picture, "a cup")
    assert outcome.ok and outcome.message.startswith("Found 'a cup': it covers "), outcome.message
    with Image.open(io.BytesIO(drawn)) as preview:
        assert max(preview.size) <= 256 and preview.mode == "RGB"
    assert actions.concept_cards() == []  # a preview stores nothing
    outcome = actions.add_concept(picture, MASK_AUTO, None, None, "", "", object_text="a cup")
    assert outcome.ok, outcome.message
    origin = actions.worker.call(lambda session: session.mask_origin("coffee"))
    assert (origin["mask_source"], origin["mask_object"]) == ("auto", "a cup")
    # The preview shown before adding is the one stored with the concept.
    stored = actions.worker.call(lambda session: session.concept("coffee"))
    assert stored.preview_path.read_bytes() == drawn
    assert "object 'a cup'" in actions.concept_details("coffee").markdown
    exported, outcome = actions.export_concept("coffee", tmp_path / "exports")
    assert outcome.ok and exported == tmp_path / "exports" / "coffee.elite.safetensors" and exported.stat().st_size > 0
    # An empty box is the default object; a broken picture is one line naming the upload.
    broken = tmp_path / "copy" / "broken.png"
    broken.parent.mkdir()
    broken.write_text("no picture")
    drawn, outcome = actions.preview_automatic_mask(str(broken), "", {str(broken): "broken.png"})
    assert drawn is None and outcome.message.startswith("Error: image 'broken.png' is not an image PIL can read")


def test_generate_errors_are_one_message(actions):
    updates = list(actions.generate("<nobody> on the beach", **FAST))
    assert len(updates) == 1 and updates[0].error.startswith("Error: ") and "nobody" in updates[0].error


def test_the_worker_runs_every_call_on_one_thread(use_tiny_models):
    worker = SessionWorker(Session())
    try:
        threads = {worker.call(lambda session: threading.get_ident()) for _ in range(3)}
        events = list(worker.call_with_events(lambda session, emit: [emit(number) for number in range(3)] and "done"))
        assert len(threads) == 1 and threading.get_ident() not in threads
        assert events[:3] == [0, 1, 2] and events[3].result() == "done"
    finally:
        worker.close()


def test_server_settings():
    assert parse_auth("me:pa:ss") == ("me", "pa:ss")
    for bad in ("me", ":secret", "me:"):
        with pytest.raises(Exception, match="--auth must be user:password"):
            parse_auth(bad)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match=f"port {port} on 127.0.0.1 is in use"):
            check_port("127.0.0.1", port)
    assert check_port("127.0.0.1", 0) > 0


def test_the_command_refuses_bad_settings_in_one_line(run_cli):
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    result = run_cli("ui", "--auth", "nopassword")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --auth must be user:password (both non-empty), e.g. --auth me:some-long-secret."]
