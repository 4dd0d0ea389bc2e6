"""Mapping networks against the spec formulas, and safe checkpoint loading."""

import pickle
import zipfile

import pytest
import torch

from elite_cli.errors import ModelError
from elite_cli.model.mappers import (
    GlobalMapper,
    LocalMapper,
    check_against_unet,
    convert_reference_checkpoint,
    fingerprint,
    load_mapper_state,
)

KV = {"down_blocks_0_attentions_0_transformer_blocks_0_attn2": (12, 6), "mid_block_attentions_0_transformer_blocks_0_attn2": (16, 6)}


def spec_mlp(x, state, prefix):
    """Linear -> LayerNorm -> LeakyReLU(0.01) -> Linear -> LayerNorm -> LeakyReLU -> Linear, written out."""

    def linear(v, i):
        return v @ state[f"{prefix}.{i}.weight"].T + state[f"{prefix}.{i}.bias"]

    def layer_norm(v, i):
        mean = v.mean(-1, keepdim=True)
        var = ((v - mean) ** 2).mean(-1, keepdim=True)
        return (v - mean) / torch.sqrt(var + 1e-5) * state[f"{prefix}.{i}.weight"] + state[f"{prefix}.{i}.bias"]

    def leaky(v):
        return torch.where(v > 0, v, 0.01 * v)

    return linear(leaky(layer_norm(linear(leaky(layer_norm(linear(x, 0), 1)), 3), 4)), 6)


def random_state(cls, seed=0):
    torch.manual_seed(seed)
    mapper = cls(10, 20, 6, KV)
    for parameter in mapper.parameters():  # LayerNorm starts at 1/0: make every tensor matter
        parameter.data.normal_(0, 0.5)
    return {k: v.clone() for k, v in mapper.state_dict().items()}


def test_global_mapper_matches_spec():
    state = random_state(GlobalMapper)
    mapper = GlobalMapper.from_state_dict(state, "test")
    torch.manual_seed(1)
    features = [torch.randn(2, 1 + 9, 10) for _ in range(5)]
    words = mapper(features)
    assert words.shape == (2, 5, 6)
    for b in range(2):
        for i in range(5):
            cls_part = spec_mlp(features[i][b, 0], state, f"mapping_{i}")
            patches = [spec_mlp(features[i][b, 1 + p], state, f"mapping_patch_{i}") for p in range(9)]
            expected = cls_part + sum(patches) / len(patches)
            assert (words[b, i] - expected).abs().max() < 1e-5


def test_local_mapper_matches_spec():
    state = random_state(LocalMapper, seed=3)
    mapper = LocalMapper.from_state_dict(state, "test")
    torch.manual_seed(2)
    features = [torch.randn(1, 1 + 9, 10) for _ in range(5)]
    local = mapper(features)
    assert local.shape == (1, 9, 6)
    for p in range(9):
        per_level = [spec_mlp(features[i][0, 0], state, f"mapping_{i}") + spec_mlp(features[i][0, 1 + p], state, f"mapping_patch_{i}") for i in range(5)]
        expected = sum(per_level) / 5
        assert (local[0, p] - expected).abs().max() < 1e-5


def test_sizes_are_inferred_from_tensors():
    mapper = GlobalMapper.from_state_dict(random_state(GlobalMapper), "test")
    assert (mapper.image_width, mapper.hidden_width, mapper.text_width) == (10, 20, 6)
    assert mapper.kv_modules == sorted(KV)


def test_reference_pt_round_trips_through_safetensors(tmp_path):
    state = random_state(GlobalMapper)
    torch.save(state, tmp_path / "global_mapper.pt")
    loaded = load_mapper_state(tmp_path / "global_mapper.pt")
    GlobalMapper(10, 20, 6, KV).load_state_dict(loaded, strict=True)
    print_id = convert_reference_checkpoint(tmp_path / "global_mapper.pt", tmp_path / "global.safetensors")
    back = load_mapper_state(tmp_path / "global.safetensors")
    assert set(back) == set(state)
    for name in state:
        assert back[name].dtype == state[name].dtype
        assert torch.equal(back[name], state[name])
    assert print_id == fingerprint(state) == fingerprint(back)
    assert print_id.startswith("sha256:")
    # Any change of one value changes the fingerprint.
    state["mapping_0.0.bias"][0] += 1
    assert fingerprint(state) != print_id


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def write_pickle_with_code(path):
    torch.save({"mapping_0.0.weight": torch.zeros(2, 2)}, path)
    # Replace the data pickle inside the zip with one that calls a function on load.
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    data_name = next(name for name in members if name.endswith("data.pkl"))
    members[data_name] = pickle.dumps({"mapping_0.0.weight": Exploit()}, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.pop("mapping_3.4.bias"), "missing key 'mapping_3.4.bias'"),
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected key 'extra.weight'"),
        (lambda s: s.update({"mapping_2.3.weight": torch.zeros(20, 21)}), "'mapping_2.3.weight' has shape [20, 21]"),
        (lambda s: s["mapping_1.6.bias"].__setitem__(0, float("nan")), "NaN"),
        (lambda s: s.update({"mapping_1.6.bias": torch.zeros(6, dtype=torch.long)}), "floating point"),
    ],
)
def test_malformed_checkpoints_are_refused(tmp_path, damage, message):
    state = random_state(GlobalMapper)
    damage(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelError) as error:
        GlobalMapper.from_state_dict(load_mapper_state(tmp_path / "bad.pt"), "global mapper")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    write_pickle_with_code(path)
    with pytest.raises(ModelError) as error:
        load_mapper_state(path)
    assert "refused" in str(error.value) and "\n" not in str(error.value)
    assert "pwned" not in capsys.readouterr().out


def test_not_a_checkpoint_and_missing_file(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_mapper_state(tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="does not exist"):
        load_mapper_state(tmp_path / "nope.pt")


def test_mapper_that_does_not_fit_the_unet_names_the_first_key():
    mapper = GlobalMapper.from_state_dict(random_state(GlobalMapper), "global mapper")
    unet = dict(KV)
    check_against_unet(mapper, unet, "global mapper")  # fits
    unet["up_blocks_1_attentions_0_transformer_blocks_0_attn2"] = (12, 6)
    with pytest.raises(ModelError, match="missing key 'up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.weight'"):
        check_against_unet(mapper, unet, "global mapper")
    # An SD 2.x UNet reads 1024-wide text: same module names, other shapes.
    wider = {key: (out, 1024) for key, (out, _) in KV.items()}
    with pytest.raises(ModelError, match=r"has shape \[12, 6\] but the UNet layer needs \[12, 1024\]"):
        check_against_unet(mapper, wider, "global mapper")
    fewer = {key: KV[key] for key in list(KV)[:1]}
    with pytest.raises(ModelError, match="unexpected key 'mid_block"):
        check_against_unet(mapper, fewer, "global mapper")


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("mapper.pt", lambda p: p.write_bytes(b"hi\n"), "is neither a PyTorch checkpoint nor a safetensors file"),
        ("local_mapper.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" * 8),
         "is neither a PyTorch checkpoint nor a safetensors file"),
        ("pickle.pt", lambda p: p.write_bytes(b"\x80\x02hi"), "the data is damaged or not a checkpoint"),
        ("cut.pt", lambda p: p.write_bytes(_saved_bytes()[:1000]), "is a damaged or truncated PyTorch checkpoint (1000 bytes)"),
        ("bundle.safetensors", lambda p: _write_bundle_like(p), "is an elite concept bundle (from `elite export`), not a mapper"),
    ],
)
def test_files_that_are_not_mapper_checkpoints_say_what_they_are(tmp_path, name, write, message):
    # These used to surface a KeyError ("unexpected KeyError: 105"), a cut-off torch message, or a
    # safetensors header error for a picture.
    path = tmp_path / name
    write(path)
    with pytest.raises(ModelError) as error:
        load_mapper_state(path, "local mapper checkpoint")
    assert message in str(error.value) and "\n" not in str(error.value)


def _saved_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(random_state(GlobalMapper), buffer)
    return buffer.getvalue()


def _write_bundle_like(path):
    from safetensors.torch import save_file

    save_file({"words": torch.zeros(5, 4)}, str(path), metadata={"format": "elite-concept"})
