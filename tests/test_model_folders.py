"""A model setting pointed at a folder of the wrong kind (issue 26, item 9): one line naming the
setting, what the folder holds and what the setting accepts, read from the folder's config files
before any weights load; exit 1, the library untouched. Real tiny model folders, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elite_cli.errors import ModelError
from elite_cli.model.folders import FOLDER_KINDS, check_model_folder


def library_state(home: Path) -> dict[str, bytes]:
    return {path.relative_to(home).as_posix(): path.read_bytes() for path in sorted(home.rglob("*")) if path.is_file()}


def wrong_folders(tiny_models, tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return {"clip vision": Path(tiny_models.image_encoder), "unet": Path(tiny_models.base_model) / "unet",
            "empty": empty, "bert": bert, "clipseg": Path(tiny_models.segmenter), "sd": Path(tiny_models.base_model)}


CASES = [
    # (setting's variable, wrong folder, command, what the line says the folder holds)
    ("ELITE_SEGMENTER", "clip vision", "add", "holds a 'clip_vision_model' model (its model_type) in config.json"),
    ("ELITE_SEGMENTER", "empty", "add", "is an empty folder, with no config.json"),
    ("ELITE_SEGMENTER", "sd", "add", "is a folder whose model_index.json names a StableDiffusionPipeline (its "
                                     "_class_name), with no config.json"),
    ("ELITE_BASE_MODEL", "unet", "add", "is a folder whose config.json names a UNet2DConditionModel (its _class_name), "
                                        "with no unet/config.json"),
    ("ELITE_BASE_MODEL", "empty", "gen", "is an empty folder, with no unet/config.json"),
    ("ELITE_BASE_MODEL", "clip vision", "gen", "is a folder whose config.json names a 'clip_vision_model' model (its "
                                               "model_type), with no unet/config.json"),
    ("ELITE_IMAGE_ENCODER", "clipseg", "add", "holds a 'clipseg' model (its model_type) in config.json"),
    ("ELITE_IMAGE_ENCODER", "bert", "gen", "holds a 'bert' model (its model_type) in config.json"),
    ("ELITE_IMAGE_ENCODER", "unet", "add", "holds a UNet2DConditionModel (its _class_name) in config.json"),
]
ACCEPTED = {"ELITE_SEGMENTER": ("segmenter", "ELITE_SEGMENTER or `elite config set segmenter`",
                                "it accepts a CLIPSeg model (config.json with model_type 'clipseg'), as a folder or a hub "
                                "id such as CIDAS/clipseg-rd64-refined."),
            "ELITE_BASE_MODEL": ("base model", "--base-model or ELITE_BASE_MODEL",
                                 "it accepts a Stable Diffusion 1.x diffusers folder (unet/, vae/, text_encoder/ and "
                                 "tokenizer/ with their configs), as a folder or a hub id such as "
                                 "CompVis/stable-diffusion-v1-4."),
            "ELITE_IMAGE_ENCODER": ("image encoder", "--image-encoder or ELITE_IMAGE_ENCODER",
                                    "it accepts a CLIP vision model (config.json with model_type 'clip_vision_model' or "
                                    "'clip'), as a folder or a hub id such as openai/clip-vit-large-patch14.")}


@pytest.mark.parametrize("variable, wrong, command, holds", CASES,
                         ids=[f"{case[0]}={case[1]}:{case[2]}" for case in CASES])
def test_a_setting_at_a_folder_of_the_wrong_kind_is_one_line(run_cli, use_tiny_models, tiny_models, elite_home,
                                                             tmp_path, cat_picture, dog_picture, monkeypatch,
                                                             variable, wrong, command, holds):
    added = run_cli("add", cat_picture)
    assert added.exit_code == 0, added.output
    before = library_state(elite_home)
    folder = wrong_folders(tiny_models, tmp_path)[wrong]
    monkeypatch.setenv(variable, str(folder))
    args = ["add", dog_picture] if command == "add" else ["gen", "<mycat> on the beach", "--steps", "1", "--width", "64",
                                                           "--height", "64", "-o", tmp_path / "out"]
    result = run_cli(*args)
    label, where, accepts = ACCEPTED[variable]
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"Error: the {label} '{folder}' ({where}) {holds}; {accepts}"]
    assert "unexpected" not in result.output
    assert library_state(elite_home) == before
    assert not (tmp_path / "out").exists()


def test_the_check_is_one_function_a_new_setting_reuses(tmp_path, tiny_models):
    from elite_cli.model.folders import Component, FolderKind

    controlnet = FolderKind("controlnet", "ControlNet", "ELITE_CONTROLNET", "a ControlNetModel folder",
                            "lllyasviel/sd-controlnet-canny", (Component("config.json", class_names=("ControlNetModel",)),))
    with pytest.raises(ModelError, match=r"^the ControlNet '.*unet' \(ELITE_CONTROLNET\) holds a UNet2DConditionModel "
                                         r"\(its _class_name\) in config.json; it accepts a ControlNetModel folder"):
        check_model_folder(Path(tiny_models.base_model) / "unet", controlnet, str(Path(tiny_models.base_model) / "unet"))
    for setting, folder in (("base_model", tiny_models.base_model), ("image_encoder", tiny_models.image_encoder),
                            ("segmenter", tiny_models.segmenter)):
        check_model_folder(Path(folder), FOLDER_KINDS[setting], str(folder))  # the right kinds pass


def test_a_config_that_is_not_json_is_said_so(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ModelError, match=r"^the segmenter '.*' \(ELITE_SEGMENTER or `elite config set segmenter`\): its "
                                         r"config.json is not JSON; it accepts a CLIPSeg model"):
        check_model_folder(tmp_path, FOLDER_KINDS["segmenter"], str(tmp_path))
