"""`elite gen` inputs that never reach the models: --again files that are not elite PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

GOOD = {"prompt": "<mycat> x", "negative_prompt": "", "seed": 1, "steps": 2, "guidance_scale": 5.0, "llambda": 0.8,
        "width": 64, "height": 64, "scheduler": "lms"}


def png_with_chunk(path: Path, text: str | None) -> Path:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("elite", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: png_with_chunk(d / "plain.png", None), "has no elite parameters chunk"),
        (lambda d: png_with_chunk(d / "cut.png", json.dumps(GOOD)[:-5]), "has a damaged elite parameters chunk (not a JSON object)"),
        (lambda d: png_with_chunk(d / "list.png", "[1, 2]"), "has a damaged elite parameters chunk (not a JSON object)"),
        (lambda d: png_with_chunk(d / "nosteps.png", json.dumps({k: v for k, v in GOOD.items() if k != "steps"})),
         "has an elite parameters chunk without steps"),
        (lambda d: png_with_chunk(d / "badseed.png", json.dumps({**GOOD, "seed": "one"})), "has a damaged elite parameters chunk"),
        (lambda d: (d / "text.png").write_text("hello") and d / "text.png", "cannot be read as an image"),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "photo.jpg") or d / "photo.jpg", "is a JPEG image, not a PNG written by `elite gen`"),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "photo", format="JPEG") or d / "photo", "is a JPEG image"),
    ],
)
def test_again_with_a_file_that_is_not_an_elite_png(run_cli, tmp_path, monkeypatch, make, message):
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    result = run_cli("gen", "--again", path, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: '{path}' {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- prompts longer than the text encoder's window ----------------------------------------------

TINY = ["--steps", "1", "--width", "64", "--height", "64", "--seed", "3"]


def test_a_concept_beyond_the_token_window_fails_before_any_image_of_the_batch(run_cli, use_tiny_models, cat_picture,
                                                                               tmp_path):
    assert run_cli("add", cat_picture).exit_code == 0
    prompts = tmp_path / "prompts.txt"
    long = " ".join(f"w{i}" for i in range(100)) + " <mycat>"
    prompts.write_text(f"a photo of <mycat>\n{long}\n")
    result = run_cli("gen", "--prompts", prompts, "-o", tmp_path / "out", *TINY)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: the prompt 'w0 w1 w2")
    assert "token window and <mycat> falls outside it" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cut_prompts_and_negative_prompts_are_warned_about_once_each(run_cli, use_tiny_models, tmp_path):
    words = " ".join(f"w{i}" for i in range(100))
    result = run_cli("gen", f"a photo {words}", "-n", "2", "--negative", f"blurry {words}", "-o", tmp_path / "out", *TINY)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 2, result.stderr
    assert warnings[0].startswith("Warning: prompt 'a photo w0 w1")
    assert warnings[1].startswith("Warning: negative prompt 'blurry w0 w1")
    assert "is longer than" in warnings[1] and "these words were dropped" in warnings[1]


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_models_load(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    # No models are configured: the folder is checked first.
    result = run_cli("gen", "a photo", "-o", "file.txt/out")
    assert result.exit_code == 1, result.output
    assert result.stderr == "Error: output folder 'file.txt/out' cannot be made: 'file.txt' is a file; pass a folder with -o.\n"


def test_again_with_other_models_than_the_run_warns(run_cli, use_tiny_models, tiny_models, tmp_path, monkeypatch):
    import shutil

    made = run_cli("gen", "a photo", "-o", tmp_path / "out", "--json", *TINY)
    assert made.exit_code == 0, made.output
    png = json.loads(made.stdout)[0]["path"]
    same = run_cli("gen", "--again", png, "-o", tmp_path / "same")
    assert same.exit_code == 0 and "Warning" not in same.stderr, same.output
    copy = shutil.copytree(tiny_models.base_model, tmp_path / "other-base")
    monkeypatch.setenv("ELITE_BASE_MODEL", str(copy))
    other = run_cli("gen", "--again", png, "-o", tmp_path / "other")
    assert other.exit_code == 0, other.output
    assert (f"Warning: {png} was made with other models, so the images may differ: base model "
            f"'{tiny_models.base_model}' (now '{copy}').") in other.stderr


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(run_cli, use_tiny_models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa photo\r\n# note\r\na drawing\r\n".encode("utf-8"))
    result = run_cli("gen", "--prompts", prompts, "-o", tmp_path / "out", "--json", *TINY)
    assert result.exit_code == 0, result.output
    assert [item["prompt"] for item in json.loads(result.stdout)] == ["a photo", "a drawing"]


def test_a_byte_order_mark_is_not_part_of_the_first_template(tmp_path):
    from elite_cli.evaluation.runner import read_prompt_templates

    templates = tmp_path / "templates.txt"
    templates.write_bytes("\ufeff{} on the beach\n".encode("utf-8"))
    assert read_prompt_templates(templates) == ("{} on the beach",)


def test_a_prompt_repeated_in_a_prompts_file_is_warned_about(run_cli, use_tiny_models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo\na drawing\na photo\n")
    result = run_cli("gen", "--prompts", prompts, "-o", tmp_path / "out", *TINY)
    assert result.exit_code == 0, result.output
    assert (f"Warning: {prompts} holds 'a photo' more than once; every prompt starts at the same seed, so the "
            "copies make the same images again.") in result.stderr
    once = tmp_path / "once.txt"
    once.write_text("a photo\na drawing\n")
    assert "Warning" not in run_cli("gen", "--prompts", once, "-o", tmp_path / "out2", *TINY).stderr
