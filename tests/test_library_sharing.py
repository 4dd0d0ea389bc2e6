"""Sharing: bit-exact bundles, hostile-file refusal, textual-inversion exports other tools load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from elite_cli.errors import FormatError, InputError
from elite_cli.library import ConceptStore
from elite_cli.library import conceptfile as cf
from elite_cli.library.sharing import LOCAL_DETAIL_NOTE
from library_support import make_picture, random_concept


@pytest.fixture
def store(tmp_path):
    store = ConceptStore(tmp_path / "home")
    store.add(random_concept(1), image_path=make_picture(tmp_path / "cat.png", 1), tags=["pet"])
    return store


@pytest.fixture
def bundle(store, tmp_path):
    return store.export("cat", tmp_path / "cat.safetensors").path


def test_bundle_round_trip_is_bit_exact(store, bundle, tmp_path):
    other = ConceptStore(tmp_path / "friend")
    imported = other.import_concept(bundle)
    original = store.get("cat")
    assert (imported.id, imported.name, imported.tags, imported.created) == \
        (original.id, original.name, original.tags, original.created)
    assert imported.file_path.read_bytes() == original.file_path.read_bytes()
    for name in ("words", "local", "mask"):
        assert torch.equal(getattr(other.load("cat"), name), getattr(store.load("cat"), name))
    again = other.export("cat", tmp_path / "again.safetensors").path
    assert again.read_bytes() == bundle.read_bytes()
    assert imported.thumbnail_path.read_bytes() == original.thumbnail_path.read_bytes()
    assert other.check().ok


def test_import_twice_is_a_duplicate_and_name_override_works(store, bundle, tmp_path):
    assert store.import_concept(bundle).duplicate
    other = ConceptStore(tmp_path / "friend")
    assert other.import_concept(bundle, name="Mochi").name == "Mochi"
    assert cf.read_metadata(other.get("Mochi").file_path)["name"] == "Mochi"


def test_export_refuses_overwrite_and_unknown_format(store, bundle, tmp_path):
    with pytest.raises(InputError, match="already exists; pass --overwrite to replace it"):
        store.export("cat", bundle)
    for format in ("elite", "diffusers"):
        with pytest.raises(InputError, match=r"^folder '.*missing' does not exist; create it first") as refused:
            store.export("cat", tmp_path / "missing" / "cat.safetensors", format=format)
        assert ".tmp-" not in str(refused.value)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(InputError, match="elite, diffusers, a1111"):
        store.export("cat", tmp_path / "x.safetensors", format="ckpt")
    (tmp_path / "shared").mkdir()
    assert store.export("cat", tmp_path / "shared").path == tmp_path / "shared" / "cat.safetensors"
    assert store.export("cat", bundle, overwrite=True).path == bundle


def _rewrite_bundle(bundle, path, tensors=None, metadata=None):
    stored = cf.load_path(bundle, allow_thumbnail=True)
    new_tensors = {**stored.tensors, **(tensors or {})}
    new_metadata = {**stored.metadata, **(metadata or {})}
    save_file(new_tensors, str(path), metadata=new_metadata)
    return path


def _refuses(store, path, match):
    before = sorted(p.name for p in store.concepts_dir.iterdir())
    with pytest.raises(FormatError, match=match):
        store.import_concept(path)
    assert sorted(p.name for p in store.concepts_dir.iterdir()) == before and store.count() == 1


def test_import_refuses_pickles(store, tmp_path):
    torch.save({"words": torch.zeros(5, 32)}, tmp_path / "evil.safetensors")
    _refuses(store, tmp_path / "evil.safetensors", "pickle")
    (tmp_path / "raw.pt").write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    _refuses(store, tmp_path / "raw.pt", "pickle")


def test_import_refuses_nan(store, bundle, tmp_path):
    stored = cf.load_path(bundle, allow_thumbnail=True)
    words = stored.tensors["words"].clone()
    words[1, 2] = float("nan")
    _refuses(store, _rewrite_bundle(bundle, tmp_path / "nan.safetensors", tensors={"words": words}), "non-finite")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"tensors": {"words": torch.zeros(4, 32, dtype=torch.float16)}}, "shape"),
        ({"tensors": {"local": torch.zeros(16, 32, dtype=torch.float32)}}, "F16"),
        ({"tensors": {"extra": torch.zeros(1, dtype=torch.float16)}}, "holds tensors"),
        ({"metadata": {"format_version": "99"}}, "version '99'"),
        ({"metadata": {"format": "something-else"}}, "not an elite concept"),
        ({"metadata": {"grid": "5"}}, "shape"),
        ({"metadata": {"concept_id": "sha256:" + "0" * 64}}, "altered"),
        ({"metadata": {"name": "../../etc"}}, "invalid name"),
        ({"metadata": {"tags": '["ok", "bad tag"]'}}, "invalid name or tag"),
        ({"tensors": {"thumbnail": torch.zeros(512, 512, 3, dtype=torch.uint8)}}, "thumbnail"),
    ],
)
def test_import_refuses_malformed_bundles(store, bundle, tmp_path, change, match):
    path = _rewrite_bundle(bundle, tmp_path / "bad.safetensors", change.get("tensors"), change.get("metadata"))
    _refuses(store, path, match)


def test_import_refuses_huge_metadata_and_garbage(store, bundle, tmp_path):
    huge = _rewrite_bundle(bundle, tmp_path / "huge.safetensors", metadata={"padding": "x" * (100 * 1024)})
    _refuses(store, huge, "header, over the 65536-byte limit")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    _refuses(store, tmp_path / "junk.safetensors", "not a safetensors file")
    data = bundle.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[: len(data) // 2])
    _refuses(store, tmp_path / "short.safetensors", rf"is truncated: it has {len(data) // 2} of its {len(data)} bytes")
    (tmp_path / "header-cut.safetensors").write_bytes(data[:40])
    _refuses(store, tmp_path / "header-cut.safetensors", "is truncated .it ends inside its safetensors header")


def test_diffusers_export_loads_with_load_textual_inversion(store, tmp_path, tiny_models):
    from diffusers import StableDiffusionPipeline

    result = store.export("cat", tmp_path / "cat-ti.safetensors", format="diffusers")
    assert result.note == LOCAL_DETAIL_NOTE and "local detail does not travel" in result.note
    tensors = load_file(result.path)
    assert list(tensors) == ["<cat>"] and tensors["<cat>"].shape == (1, 32)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_models.base_model), safety_checker=None)
    pipe.load_textual_inversion(str(result.path))
    token_id = pipe.tokenizer.convert_tokens_to_ids("<cat>")
    loaded = pipe.text_encoder.get_input_embeddings().weight[token_id]
    assert torch.equal(loaded.detach().float(), store.load("cat").words[0])


def test_a1111_export_has_emb_params_and_metadata(store, tmp_path):
    from safetensors import safe_open

    result = store.export("cat", tmp_path / "cat-a1111.safetensors", format="a1111")
    assert "local detail does not travel" in result.note
    with safe_open(result.path, framework="pt") as handle:
        assert list(handle.keys()) == ["emb_params"]
        metadata = handle.metadata()
        emb = handle.get_tensor("emb_params")
    assert emb.shape == (1, 32) and emb.dtype == torch.float32
    assert torch.equal(emb[0], store.load("cat").words[0])
    assert metadata["name"] == "cat" and metadata["sd_checkpoint_name"] == "tiny/sd"
    assert metadata["elite_note"] == LOCAL_DETAIL_NOTE
    json.dumps(metadata)


def test_a_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(store, tmp_path):
    header = json.dumps({"__metadata__": {"format": "other"}}).encode()
    header += b" " * (128 - len(header))
    path = tmp_path / "odd.safetensors"
    path.write_bytes((128).to_bytes(8, "little") + header)
    _refuses(store, path, "not an elite concept")


def test_import_says_what_a_file_is_when_it_is_not_a_bundle(store, tmp_path):
    store.export("cat", tmp_path / "ti.safetensors", format="diffusers")
    store.export("cat", tmp_path / "webui.safetensors", format="a1111")
    for embedding in ("ti.safetensors", "webui.safetensors"):
        _refuses(store, tmp_path / embedding, r"is a textual-inversion embedding .diffusers or A1111 format., not an "
                 r"elite concept bundle.*accepts only concept bundles written by `elite export`")
    make_picture(tmp_path / "photo.png", 3).rename(tmp_path / "photo.safetensors")  # a PNG under a misleading name
    _refuses(store, tmp_path / "photo.safetensors", r"is not a safetensors file; elite import accepts only concept "
             r"bundles written by `elite export`")
    save_file({"weight": torch.zeros(4, 4), "bias": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    _refuses(store, tmp_path / "model.safetensors", "is a safetensors file but not an elite concept bundle")


def test_import_refuses_a_bad_name_before_reading_the_file(store, tmp_path):
    not_a_bundle = make_picture(tmp_path / "x.png", 1)
    with pytest.raises(InputError, match="concept name 'bad name' is not valid"):
        store.import_concept(not_a_bundle, name="bad name")


def test_a_refused_export_names_the_file_asked_for_not_the_temp_file(store, bundle, tmp_path, monkeypatch):
    # A folder one may not write to used to be reported as "'<dir>/.tmp-0501edd2aa18-x.safetensors' ...".
    from elite_cli.common.failures import user_message

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cf, "open", refuse, raising=False)
    target = tmp_path / "x.safetensors"
    with pytest.raises(PermissionError) as error:
        store.export("cat", target)
    assert user_message(error.value) == f"permission denied for '{target}'; choose a path you can write to."
    assert list(tmp_path.glob(".tmp-*")) == []
