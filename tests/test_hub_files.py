"""Which files elite takes of a hub model, hf:// settings, and loads that cannot half-succeed (no network)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from elite_cli.errors import InputError, ModelError
from elite_cli.model.hub import HubFile, parse_hub_file, select_files

# The files of CompVis/stable-diffusion-v1-4 (main): weights in two formats, two precisions and
# an EMA-less copy, a safety checker and a feature extractor that elite never loads.
SD_V1_4 = """.gitattributes README.md model_index.json v1-variants-scores.jpg feature_extractor/preprocessor_config.json
safety_checker/config.json safety_checker/model.safetensors safety_checker/model.fp16.safetensors
safety_checker/pytorch_model.bin safety_checker/pytorch_model.fp16.bin scheduler/scheduler_config.json
text_encoder/config.json text_encoder/model.safetensors text_encoder/model.fp16.safetensors
text_encoder/pytorch_model.bin text_encoder/pytorch_model.fp16.bin tokenizer/merges.txt
tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json tokenizer/vocab.json unet/config.json
unet/diffusion_pytorch_model.bin unet/diffusion_pytorch_model.fp16.bin unet/diffusion_pytorch_model.safetensors
unet/diffusion_pytorch_model.fp16.safetensors unet/diffusion_pytorch_model.non_ema.bin
unet/diffusion_pytorch_model.non_ema.safetensors vae/config.json vae/diffusion_pytorch_model.bin
vae/diffusion_pytorch_model.fp16.bin vae/diffusion_pytorch_model.safetensors
vae/diffusion_pytorch_model.fp16.safetensors""".split()
CLIP_L14 = """config.json flax_model.msgpack merges.txt model.safetensors preprocessor_config.json pytorch_model.bin
special_tokens_map.json tf_model.h5 tokenizer.json tokenizer_config.json vocab.json""".split()
COMMON = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/merges.txt",
          "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
          "unet/config.json", "vae/config.json"]


def test_the_base_model_takes_one_copy_of_each_weight_and_nothing_elite_does_not_load():
    wanted, lacking = select_files("base_model", SD_V1_4)
    assert lacking == []
    assert wanted == sorted(COMMON + ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                      "vae/diffusion_pytorch_model.safetensors"])
    fp16, _ = select_files("base_model", SD_V1_4, prefer_fp16=True)
    assert fp16 == sorted(COMMON + ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                                    "vae/diffusion_pytorch_model.fp16.safetensors"])
    # Weights already cached in full precision are used on a GPU too: never a second copy.
    cached = ["unet/diffusion_pytorch_model.safetensors"]
    assert "unet/diffusion_pytorch_model.safetensors" in select_files("base_model", SD_V1_4, True, cached)[0]
    # A repo with pickles only: the pickles.
    pickles = [name for name in SD_V1_4 if not name.endswith(".safetensors")]
    assert "unet/diffusion_pytorch_model.bin" in select_files("base_model", pickles)[0]


def test_the_image_encoder_takes_config_and_safetensors_and_gen_only_the_config():
    assert select_files("image_encoder", CLIP_L14) == (["config.json", "model.safetensors"], [])
    assert select_files("image_encoder_config", CLIP_L14) == (["config.json"], [])


def test_what_a_model_lacks_is_named():
    partial = [name for name in SD_V1_4 if not name.startswith("unet/")]
    _, lacking = select_files("base_model", partial)
    assert lacking == ["unet/config.json", "unet/ weights"]


def test_hf_settings_name_a_repo_revision_and_path():
    assert parse_hub_file("hf://ELITE-library/ELITE/checkpoints/global_mapper.pt") == \
        HubFile("ELITE-library/ELITE", "main", "checkpoints/global_mapper.pt")
    assert parse_hub_file("hf://me/mine@v2/a/b.pt") == HubFile("me/mine", "v2", "a/b.pt")
    assert str(HubFile("me/mine", "v2", "a/b.pt")) == "hf://me/mine@v2/a/b.pt"
    assert parse_hub_file("models/global_mapper.pt") is None
    for wrong in ("hf://ELITE-library/ELITE", "hf://ELITE-library//x.pt", "hf://a/b/"):
        with pytest.raises(InputError, match="is not a hub file; write hf://owner/repo/path/in/repo"):
            parse_hub_file(wrong)


def test_hf_settings_are_not_paths_in_config_files_or_the_environment(tmp_path):
    from elite_cli.common.config import resolve, set_config_value

    set_config_value(tmp_path, "global_mapper", "hf://me/mine/global.pt")
    settings = resolve(tmp_path, environ={"ELITE_LOCAL_MAPPER": "hf://me/mine/local.pt"})
    assert settings["global_mapper"].value == "hf://me/mine/global.pt"
    assert settings["local_mapper"].value == "hf://me/mine/local.pt"


def test_a_tokenizer_folder_without_its_vocabulary_is_refused_by_name(tiny_models, tmp_path):
    from transformers import CLIPTokenizer

    from elite_cli.model.loading import load_pretrained

    base = tmp_path / "sd"
    shutil.copytree(tiny_models.base_model, base)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (base / "tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match=r"^the base model tokenizer in '.*tokenizer' has no usable vocabulary"):
        load_pretrained(CLIPTokenizer.from_pretrained, str(base), "base model tokenizer", kind="base_model",
                        subfolder="tokenizer")


def test_a_hub_model_that_is_not_cached_offline_fails_in_one_sentence():
    from elite_cli.model.loading import load_pretrained

    def never_called(*args, **kwargs):
        raise AssertionError("from_pretrained ran without a complete folder")

    with pytest.raises(ModelError, match=r"^the base model 'someone/new-model' is not in the Hugging Face cache and "
                                         r".* cannot be reached \(HF_HUB_OFFLINE is set\); connect to the internet"):
        load_pretrained(never_called, "someone/new-model", "base model tokenizer", kind="base_model",
                        subfolder="tokenizer")
