"""Model loading through the same code path users take, on the tiny models."""

import dataclasses
from pathlib import Path

import pytest
import torch

from elite_cli.errors import InputError, ModelError
from elite_cli.model.mappers import convert_reference_checkpoint, load_mapper_state
from elite_cli.model.loading import load_models, resolve_device, resolve_dtype


def test_loaded_models_are_cached_and_fingerprinted(tiny_spec, loaded_models):
    assert load_models(tiny_spec) is loaded_models
    assert loaded_models.global_fingerprint.startswith("sha256:")
    assert loaded_models.global_fingerprint != loaded_models.local_fingerprint
    assert loaded_models.grid == 16 and loaded_models.dtype == torch.float32
    # the UNet's cross-attention layers run the ELITE processor
    kinds = {type(p).__name__ for name, p in loaded_models.unet.attn_processors.items() if "attn2" in name}
    assert kinds == {"EliteCrossAttnProcessor"}


def test_safetensors_mappers_load_with_the_same_fingerprint(tmp_path, tiny_spec, loaded_models):
    global_st = tmp_path / "global_mapper.safetensors"
    local_st = tmp_path / "local_mapper.safetensors"
    convert_reference_checkpoint(tiny_spec.global_mapper, global_st)
    convert_reference_checkpoint(tiny_spec.local_mapper, local_st)
    models = load_models(dataclasses.replace(tiny_spec, global_mapper=str(global_st), local_mapper=str(local_st)))
    assert models.global_fingerprint == loaded_models.global_fingerprint
    assert models.local_fingerprint == loaded_models.local_fingerprint


def test_mapper_for_another_unet_is_refused_with_the_first_key(tmp_path, tiny_spec):
    state = load_mapper_state(tiny_spec.global_mapper)
    dropped = sorted(k for k in state if k.endswith("_to_k.weight"))[0]
    del state[dropped], state[dropped.replace("_to_k.", "_to_v.")]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ModelError) as error:
        load_models(dataclasses.replace(tiny_spec, global_mapper=str(tmp_path / "other.pt")))
    assert f"missing key '{dropped}'" in str(error.value)


def test_missing_base_model_folder_is_one_sentence(tmp_path, tiny_spec):
    with pytest.raises(ModelError) as error:
        load_models(dataclasses.replace(tiny_spec, base_model=str(tmp_path / "nowhere")))
    assert "does not exist" in str(error.value) and "\n" not in str(error.value)


def test_missing_mapper_configuration(tiny_spec):
    with pytest.raises(ModelError, match="elite models import"):
        load_models(dataclasses.replace(tiny_spec, global_mapper=""))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    with pytest.raises(InputError, match="no usable CUDA"):
        resolve_device("cuda")


def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="not a device"):
        resolve_device("gpu0")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(InputError, match="use auto, float32, float16 or bfloat16"):
        resolve_dtype("int8", torch.device("cpu"))


def test_generation_alone_never_loads_the_image_encoder(tiny_spec):
    """The vision tower (0.6 GB in fp16 at real size) and the mapping MLPs: only encoding needs them."""
    import numpy as np
    from PIL import Image

    from elite_cli.model.encoder import Encoder
    from elite_cli.model.generator import Generator
    from elite_cli.model.loading import forget_models

    spec = dataclasses.replace(tiny_spec, dtype="float32")  # a spec of its own: a fresh load
    forget_models(spec)
    models = load_models(spec)
    assert models.grid == 16 and models.image_size == 224  # from the config alone
    Generator(models).generate("a red dog", seed=0, steps=2, width=64, height=64)
    assert models._image_encoder is None and not models._mappings_on_device
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    concept = Encoder(models).encode(picture)
    assert models._image_encoder is not None and models._mappings_on_device
    assert concept.local.shape == (256, models.text_width)
    forget_models(spec)
    assert load_models(spec) is not models


def test_missing_image_encoder_folder_fails_at_load_time(tmp_path, tiny_spec):
    with pytest.raises(ModelError, match="image encoder folder .* does not exist"):
        load_models(dataclasses.replace(tiny_spec, image_encoder=str(tmp_path / "nowhere")))


def test_a_mapper_file_changed_after_loading_is_refused_at_the_first_encode(tiny_models, other_tiny_models, tmp_path):
    """load_models keeps no mapper MLPs (a generation-only process needs none): the first encode
    reads them from the file again, and refuses a file that is not the one loaded."""
    import shutil

    import numpy as np
    from PIL import Image

    from elite_cli.model.encoder import Encoder
    from elite_cli.model.loading import ModelSpec, forget_models

    global_file = tmp_path / "global_mapper.pt"
    shutil.copyfile(tiny_models.global_mapper, global_file)
    spec = ModelSpec(base_model=str(tiny_models.base_model), image_encoder=str(tiny_models.image_encoder),
                     global_mapper=str(global_file), local_mapper=str(tiny_models.local_mapper), device="cpu",
                     dtype="float32")
    models = load_models(spec)
    assert {p.device.type for mlp in models.global_mapper.mapping_modules() for p in mlp.parameters()} == {"meta"}
    shutil.copyfile(other_tiny_models.global_mapper, global_file)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ModelError, match="global mapper file .* changed since elite loaded it"):
        Encoder(models).encode(picture)
    forget_models(spec)
    # Loaded again, the file's own weights encode, the same as the other set's models do.
    concept = Encoder(load_models(spec)).encode(picture)
    other = Encoder(load_models(dataclasses.replace(spec, global_mapper=str(other_tiny_models.global_mapper)))).encode(picture)
    assert torch.equal(concept.words, other.words)
    forget_models(spec)


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads Linux's /proc/self/smaps")
def test_no_mapper_file_stays_mapped_after_loading_or_encoding(tiny_models, tmp_path):
    """A tensor read from a safetensors file keeps the whole file mapped (and what was read of it
    resident, MLPs included): loading keeps copies of the key/value layers only, encoding copies of
    the MLPs, and neither file stays in the process's memory map."""
    import numpy as np
    from PIL import Image

    from elite_cli.model.encoder import Encoder
    from elite_cli.model.loading import ModelSpec, forget_models
    from elite_cli.model.mappers import load_mapper_state, save_mapper_state

    files = {}
    for role in ("global", "local"):
        files[role] = tmp_path / f"{role}_mapper.safetensors"
        save_mapper_state(load_mapper_state(getattr(tiny_models, f"{role}_mapper"), role=role), files[role],
                          metadata={"mapper": role})

    def mapped() -> set[str]:
        return {line.split()[-1] for line in Path("/proc/self/smaps").read_text().splitlines()
                if line.endswith(".safetensors") and str(tmp_path) in line}

    spec = ModelSpec(base_model=str(tiny_models.base_model), image_encoder=str(tiny_models.image_encoder),
                     global_mapper=str(files["global"]), local_mapper=str(files["local"]), device="cpu", dtype="float32")
    models = load_models(spec)
    try:
        assert mapped() == set()
        picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        Encoder(models).encode(picture)
        assert mapped() == set()
        # Holding a tensor of the file would show it: the check above can fail.
        held = load_mapper_state(files["global"], role="global")
        assert mapped() == {str(files["global"])}
        del held
    finally:
        forget_models(spec)


def test_a_unet_converted_while_loading_equals_from_pretrained(tiny_models, tmp_path):
    """elite converts the UNet tensor by tensor (elite_cli/model/converting.py): the same weights
    and config as diffusers' from_pretrained(torch_dtype=...), and anything unexpected goes to it."""
    import shutil

    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    from elite_cli.model.converting import converted_state, load_converting

    folder = str(tiny_models.base_model / "unet")
    ours = load_converting(UNet2DConditionModel, folder, torch_dtype=torch.bfloat16, local_files_only=True)
    theirs = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.bfloat16, local_files_only=True)
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys() and all(torch.equal(mine[key], reference[key]) for key in mine)
    assert {tensor.dtype for tensor in mine.values()} == {torch.bfloat16} and dict(ours.config) == dict(theirs.config)
    assert not ours.training

    file = Path(folder) / "diffusion_pytorch_model.safetensors"
    shapes = {key: tuple(value.shape) for key, value in reference.items()}
    assert converted_state(file, torch.bfloat16, shapes) is not None
    assert converted_state(file, torch.float32, shapes) is None  # nothing to convert: from_pretrained maps it
    assert converted_state(file, torch.bfloat16, {**shapes, "extra.weight": (1,)}) is None
    first = next(iter(shapes))
    assert converted_state(file, torch.bfloat16, {**shapes, first: (7,)}) is None
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(file.read_bytes()[:-100])
    assert converted_state(truncated, torch.bfloat16, shapes) is None
    # A folder converting does not expect (here a tensor the model lacks) is loaded by from_pretrained.
    other_folder = tmp_path / "unet"
    shutil.copytree(folder, other_folder)
    weights = load_file(other_folder / "diffusion_pytorch_model.safetensors")
    save_file({**weights, "unexpected.weight": torch.ones(3)}, other_folder / "diffusion_pytorch_model.safetensors")
    assert converted_state(other_folder / "diffusion_pytorch_model.safetensors", torch.bfloat16, shapes) is None
    loaded = load_converting(UNet2DConditionModel, str(other_folder), torch_dtype=torch.bfloat16, local_files_only=True)
    assert all(torch.equal(loaded.state_dict()[key], reference[key]) for key in reference)


MEMORY_PROBE = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from elite_cli.model.converting import converted_state
def status(field):  # KiB; VmHWM is this process's peak (ru_maxrss would include the forking parent's)
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))
file = Path(sys.argv[1])
torch.ones(8, 8).to(torch.bfloat16)  # the conversion kernels' code pages, before the baseline
before = status("VmRSS")
if sys.argv[2] == "converting":
    state = converted_state(file, torch.bfloat16, {name: (4096, 4096) for name in "abcd"})
    assert state is not None
else:
    state = {key: value.to(torch.bfloat16) for key, value in load_file(file).items()}
print((status("VmHWM") - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc/self/status")
def test_converting_holds_one_float32_tensor_not_the_whole_file(tmp_path):
    """Four float32 tensors of 64 MiB each to bfloat16 (4 x 32 MiB): mapping the file first, as
    from_pretrained does, peaks at the file plus the converted weights (256 + 128 MiB); converting as
    it reads, at one tensor plus them (64 + 128 MiB). Peak RSS growth (VmHWM) in
    fresh processes; measured here: 192 and 385 MiB."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    file = tmp_path / "four.safetensors"
    save_file({name: torch.randn(4096, 4096) for name in "abcd"}, file)
    grown = {}
    for way in ("converting", "mapping"):
        run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(file), way], capture_output=True, text=True,
                             check=True)
        grown[way] = int(run.stdout.split()[-1])
    assert grown["converting"] + 128 <= grown["mapping"], grown  # two float32 tensors less, at the least
