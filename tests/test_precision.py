"""`--dtype auto` on the CPU (issue 24): bfloat16 where the CPU computes it natively, float32
elsewhere; concepts that do not depend on it; bfloat16 images close to float32 ones.

The CPU is a stand-in (conftest's probe answers); the choice made from its answers is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CPU_WITH_BFLOAT16, CPU_WITHOUT_BFLOAT16, pixels
from elite_cli.model.precision import ONEDNN_BFLOAT16, choose_dtype, cpu_features, native_bfloat16

CPU = torch.device("cpu")
FAST = ["--steps", "4", "--width", "64", "--height", "64"]
# Measured on the tiny models (the cat of tests/conftest.py, 64x64, lms, guidance 5, seeds 0..2):
# between a bfloat16 and a float32 image, on 0..255 levels, the mean absolute difference was
# 0.69 to 0.88 at 4 steps (largest 8) and 0.42 to 0.45 at 50 (largest 3); SD 1.4 sizes are in
# benchmarks/README.md section 10. The bounds leave room for other CPUs' kernels; an image made
# wrong (another dtype's rounding in the scheduler, a broken cast) is tens of levels away.
BFLOAT16_MEAN_ABS_BOUND = 2.0
BFLOAT16_MAX_ABS_BOUND = 24


@pytest.mark.parametrize("features, expected", [
    (CPU_WITH_BFLOAT16, torch.bfloat16),
    (CPU_WITHOUT_BFLOAT16, torch.float32),
    ({**CPU_WITHOUT_BFLOAT16, "amx_bf16": True, "amx_tile": True}, torch.bfloat16),  # Sapphire Rapids
    ({"architecture": "arm64", "neon": True, "bf16": True, ONEDNN_BFLOAT16: True}, torch.bfloat16),  # Graviton 3
    ({"architecture": "arm64", "neon": True, "bf16": False, ONEDNN_BFLOAT16: True}, torch.float32),  # Graviton 2
    ({**CPU_WITH_BFLOAT16, ONEDNN_BFLOAT16: False}, torch.float32),  # a torch without oneDNN bfloat16 kernels
    ({"architecture": "x86_64", "avx2": True}, torch.float32),
])
def test_auto_on_the_cpu_is_bfloat16_only_where_the_cpu_computes_it_natively(features, expected):
    choice = choose_dtype("auto", CPU, features)
    assert choice.dtype == expected
    assert choice.reason.startswith("auto: this CPU computes bfloat16 natively" if expected == torch.bfloat16
                                    else "auto: this CPU has no native bfloat16")
    # The probe is only asked for auto on the CPU: a forced dtype and the GPUs keep their choice.
    assert choose_dtype("float32", CPU, features).dtype == torch.float32
    assert choose_dtype("auto", torch.device("cuda"), features).dtype == torch.float16


def test_the_real_probe_reads_this_cpu():
    features = cpu_features()
    assert features["architecture"] and isinstance(features[ONEDNN_BFLOAT16], bool)
    native = native_bfloat16(features)
    assert choose_dtype("auto", CPU, features).dtype == (torch.bfloat16 if native else torch.float32)
    if features.get("avx512_bf16") and features[ONEDNN_BFLOAT16]:
        assert native == "AVX512-BF16"


def test_auto_loads_generation_in_bfloat16_and_keeps_encoding_in_float32(tiny_spec, cpu_with_bfloat16):
    from elite_cli.model.loading import load_models

    assert tiny_spec.dtype == "auto"
    models = load_models(tiny_spec)
    assert models.dtype == torch.bfloat16 and "AVX512-BF16" in models.precision.line()
    assert models.backend == "tiled"  # attention's kernel for bfloat16 on the CPU (elite_cli/model/attention.py)
    for module in (models.unet, models.vae, models.text_encoder):
        assert {parameter.dtype for parameter in module.parameters()} == {torch.bfloat16}
    mappers = (models.global_mapper, models.local_mapper)
    for mapper in mappers:
        assert {layer.weight.dtype for key in mapper.kv_modules for layer in mapper.key_value(key)} == {torch.bfloat16}
        # Generation holds no MLPs (their memory is the mappers' bulk): they are read on the first encode.
        assert {parameter.device.type for mlp in mapper.mapping_modules() for parameter in mlp.parameters()} == {"meta"}
    models.prepare_encoding()
    assert {(parameter.device.type, parameter.dtype) for mapper in mappers for mlp in mapper.mapping_modules()
            for parameter in mlp.parameters()} == {("cpu", torch.float32)}
    assert models.encoding_dtype == torch.float32
    assert {parameter.dtype for parameter in models.image_encoder.parameters()} == {torch.float32}


def test_compiled_bfloat16_keeps_pytorchs_fused_attention(tiny_spec, cpu_with_bfloat16):
    """torch.compile would unroll the tiled kernel's loops into a graph per shape: --compile keeps SDPA."""
    import dataclasses

    from elite_cli.model.loading import load_models

    models = load_models(dataclasses.replace(tiny_spec, compile=True))
    assert models.dtype == torch.bfloat16 and models.backend == "sdpa"
    asked = load_models(dataclasses.replace(tiny_spec, compile=True, attention="tiled"))
    assert asked.backend == "tiled"  # asked for by name: kept


def add_and_list(run_cli, home: Path, picture: Path, dtype: str) -> dict:
    added = run_cli("--library", home, "--dtype", dtype, "add", picture)
    assert added.exit_code == 0, added.output
    (concept,) = json.loads(run_cli("--library", home, "list", "--json").stdout)
    return concept


def test_a_concept_is_the_same_whichever_precision_generation_uses(run_cli, use_tiny_models, cat_picture, tmp_path,
                                                                  cpu_with_bfloat16):
    as_float32 = add_and_list(run_cli, tmp_path / "float32", cat_picture, "float32")
    as_auto = add_and_list(run_cli, tmp_path / "auto", cat_picture, "auto")
    assert as_auto["id"] == as_float32["id"]
    from safetensors.torch import load_file

    stored = [load_file(next((tmp_path / kind / "concepts").glob("*.safetensors"))) for kind in ("float32", "auto")]
    assert stored[0].keys() == stored[1].keys() and all(torch.equal(stored[0][k], stored[1][k]) for k in stored[0])
    # ... and auto really generates in bfloat16 here.
    generated = run_cli("--library", tmp_path / "auto", "gen", "<mycat> on the beach", "--seed", "1",
                        "-o", tmp_path / "out", *FAST)
    assert generated.exit_code == 0, generated.output
    assert generated.stderr.splitlines()[0] == (
        "Precision: bfloat16 (auto: this CPU computes bfloat16 natively (AVX512-BF16); --dtype float32 for full precision)")


def generate(run_cli, out: Path, dtype: str, *options: str) -> dict:
    result = run_cli("--dtype", dtype, "gen", *options, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    (image,) = json.loads(result.stdout)
    return image


# At 256x256 the tiny UNet's first level attends over 32x32 = 1024 latent positions, so auto's
# bfloat16 self-attention runs on the tiled kernel there (TILED_MIN_KEYS); at 64x64 on the fused one.
@pytest.mark.parametrize("side", [64, 256], ids=["fused-attention", "tiled-attention"])
def test_bfloat16_images_are_close_to_float32_and_repeat_exactly(run_cli, use_tiny_models, cat_picture, tmp_path,
                                                                cpu_with_bfloat16, side):
    assert run_cli("add", cat_picture).exit_code == 0
    prompt = ["<mycat> on the beach", "--seed", "5", "--steps", "4", "--width", str(side), "--height", str(side)]
    full = generate(run_cli, tmp_path / "float32", "float32", *prompt)
    half = generate(run_cli, tmp_path / "auto", "auto", *prompt)
    full_pixels = np.asarray(bytearray(pixels(full["path"])), dtype=np.int16)
    half_pixels = np.asarray(bytearray(pixels(half["path"])), dtype=np.int16)
    difference = np.abs(full_pixels - half_pixels)
    assert 0 < difference.mean() <= BFLOAT16_MEAN_ABS_BOUND, difference.mean()
    assert difference.max() <= BFLOAT16_MAX_ABS_BOUND, difference.max()
    # The same run again in the same precision: the same pixels.
    again = generate(run_cli, tmp_path / "again", "auto", "--again", half["run_id"][:8])
    assert pixels(again["path"]) == pixels(half["path"])
    # In another precision the picture is nearly the same only, and --again says why.
    other = run_cli("--dtype", "float32", "gen", "--again", half["path"], "-o", tmp_path / "other")
    assert other.exit_code == 0, other.output
    assert "made with other models, so the images may differ: precision 'bfloat16' (now 'float32')" in other.stderr
    if side >= 256:
        # The tiled kernel really ran: bfloat16 on PyTorch's fused kernel makes other pixels, as close
        # to float32. Measured (seeds 5, 1, 2): tiled 0.80, 0.75, 0.79 levels mean (largest 10, 9, 9);
        # fused 0.76, 0.74, 0.79 (largest 10, 10, 9).
        fused = fused_attention_image(tmp_path / "fused", half["run_id"])
        fused_difference = np.abs(full_pixels - np.asarray(bytearray(fused), dtype=np.int16))
        assert fused != pixels(half["path"])
        assert difference.mean() <= 1.5 * fused_difference.mean() + 0.1, (difference.mean(), fused_difference.mean())


def fused_attention_image(out: Path, run_id: str) -> bytes:
    """The run again through the Python API, on models loaded with attention='sdpa'."""
    import dataclasses
    import os

    from elite_cli.api import Session
    from elite_cli.model.loading import load_models

    session = Session(os.environ["ELITE_HOME"],
                      model_loader=lambda spec: load_models(dataclasses.replace(spec, attention="sdpa")))
    assert session.models.backend == "sdpa" and session.models.dtype == torch.bfloat16
    result = session.repeat(run_id, output_dir=out)
    return pixels(result.paths[0])


@pytest.mark.parametrize("dtype, status, start", [
    ("auto", "ok", "bfloat16 (auto: this CPU computes bfloat16 natively (AVX512-BF16)"),
    ("float32", "ok", "float32 (--dtype float32)"),
    ("float16", "fail", "--dtype float16 is too slow and imprecise on the CPU"),
])
def test_doctor_says_which_precision_and_why(run_cli, cpu_with_bfloat16, dtype, status, start):
    result = run_cli("--device", "cpu", "--dtype", dtype, "doctor", "--json")
    (finding,) = [finding for finding in json.loads(result.stdout) if finding["check"] == "dtype"]
    assert finding["status"] == status and finding["detail"].startswith(start), finding


def test_doctor_without_native_bfloat16_keeps_float32(run_cli):
    result = run_cli("--device", "cpu", "doctor", "--json")
    (finding,) = [finding for finding in json.loads(result.stdout) if finding["check"] == "dtype"]
    assert finding["detail"].startswith("float32 (auto: this CPU has no native bfloat16")
