"""Smoke tests of benchmarks/: every script runs on the CPU with the tiny models and writes valid JSON.

The figures themselves are meaningless here (tiny models, shared CI cores); what is checked is
that each benchmark measures what it says: real sizes are the published ones, the reference
loop computes elite's images, the low-vram path gives the same image, the JSON is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import backends, cpu_dtype, encode, generate, startup
from benchmarks.harness import REAL_SIZES, target

REPO = Path(__file__).resolve().parent.parent


def smoke_arguments(tiny_models, json_path, *extra):
    return ["--tiny", "--device", "cpu", "--models-dir", str(tiny_models.base_model.parent), "--json", str(json_path), *extra]


def read(path):
    document = json.loads(Path(path).read_text())
    environment = document["environment"]
    assert environment["torch"] and environment["diffusers"] and environment["date_utc"].endswith("Z")
    assert environment["command"].startswith(f"python benchmarks/{document['benchmark']}.py --tiny")
    assert document["size"] == "tiny"
    return document


def test_real_sizes_are_the_published_model_sizes():
    """Random weights only stand in for the real models if the shapes are theirs (parameter counts of SD 1.4 / ViT-L/14)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    configs = json.loads(REAL_SIZES.read_text())
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            "vision": CLIPVisionModel(CLIPVisionConfig(**configs["image_encoder"])),
        }
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480, "vision": 303_179_776}
    assert configs["mapper_hidden_width"] == 1024


def test_encode_smoke(tiny_models, tmp_path):
    payload = encode.main(smoke_arguments(tiny_models, tmp_path / "encode.json", "--runs", "2", "--warmup", "0"))
    document = read(tmp_path / "encode.json")
    assert document["results"] == json.loads(json.dumps(payload["results"]))
    for measurement in document["results"].values():
        assert measurement["runs"] == 2 and 0 < measurement["min_s"] <= measurement["median_s"]
        assert measurement["peak_bytes"] is None  # no CUDA: no memory figure rather than a wrong one
    parts = document["results"]
    assert set(parts) >= {"encode (end to end)", "CLIP vision pass, batch of 2", "global + local mappers",
                          "automatic mask (CLIPSeg, from the PNG file)"}
    assert document["automatic_mask_over_encode"] == pytest.approx(
        parts["automatic mask (CLIPSeg, from the PNG file)"]["median_s"] / parts["encode (end to end)"]["median_s"])
    # The targets are reported but do not count on a CPU smoke run.
    assert [entry["met"] for entry in document["targets"]] == [None, None]


def test_generate_smoke_compares_three_loops_that_make_the_same_image(tiny_models, tmp_path):
    arguments = smoke_arguments(tiny_models, tmp_path / "generate.json", "--runs", "1", "--warmup", "0",
                                "--steps", "2", "--batch-sizes", "1,2", "--low-vram")
    generate.main(arguments)
    document = read(tmp_path / "generate.json")
    assert set(document["results"]) == {"1", "2"}
    for by_variant in document["results"].values():
        assert set(by_variant) == {"a", "b", "c", "d"}
        for entry in by_variant.values():
            assert entry["median_s"] > 0 and entry["first_image_std"] > 1  # real images, not blanks
    for ratios in document["ratios"].values():
        assert ratios["time b/a"] > 0 and ratios["speed-up c/b"] > 0 and ratios["time d/b"] > 0
    checks = document["image_checks"]
    # The reference re-statement computes elite's images (so (c)/(b) compares speed, not different work) ...
    assert checks["batch 1: elite vs reference image"]["max_abs"] <= 1
    assert checks["batch 2: elite vs reference image"]["max_abs"] <= 1
    # ... and low-vram offload changes where weights live, not the image.
    assert checks["batch 1: elite vs low-vram image"]["max_abs"] == 0
    assert all(entry["met"] is None for entry in document["targets"])


def test_backends_smoke_without_compile(tiny_models, tmp_path):
    backends.main(smoke_arguments(tiny_models, tmp_path / "backends.json", "--runs", "1", "--warmup", "0",
                                  "--steps", "2", "--skip-compile"))
    document = read(tmp_path / "backends.json")
    assert document["results"]["eager, sdpa"]["1"]["median_s"] > 0
    assert document["skipped"]["eager, xformers"] == "xformers needs CUDA"
    assert document["skipped"]["compiled, sdpa"] == "--skip-compile"


def test_startup_smoke(tiny_models, tmp_path):
    startup.main(smoke_arguments(tiny_models, tmp_path / "startup.json", "--runs", "1", "--warmup", "0",
                                 "--help-runs", "1", "--breakdown-runs", "1", "--breakdown-without-command"))
    document = read(tmp_path / "startup.json")
    # Where a model command's time goes: every phase measured, shares of one whole.
    breakdown = document["breakdown"]
    assert list(breakdown["phases"])[:3] == ["import the CLI (elite_cli.commands, typer)",
                                             "settings and mapper file heads (no torch)", "import torch"]
    assert all(entry["wall_s"] >= 0 for entry in breakdown["phases"].values())
    assert sum(entry["share_of_wall"] for entry in breakdown["phases"].values()) == pytest.approx(1.0, abs=0.02)
    commands = document["commands"]
    assert commands["python -c pass (interpreter)"]["returncode"] == 0
    assert commands["python -c 'import elite_cli'"]["returncode"] == 0
    assert set(document["loading"]) == {
        "diffusers StableDiffusionPipeline.from_pretrained",
        "from_pretrained of everything elite loads (pipeline + CLIP vision + mapper files)",
        "elite load_models",
    }
    assert all(entry["median_s"] > 0 for entry in document["loading"].values())
    if (REPO / "elite_cli" / "commands").exists():
        # Once the CLI exists, its --help must run and must not import torch & co.
        assert commands["python -m elite_cli --help"]["returncode"] == 0
        assert document["help_heavy_imports"] == []


def test_cpu_dtype_smoke_runs_each_configuration_in_its_own_process(tiny_models, tmp_path):
    """Two of the four configurations (the other two are the same code in diffusers): each process
    reports its step times, its own peak RSS and its image; the float32 and auto images are compared."""
    import torch

    from elite_cli.model.precision import choose_dtype, cpu_features

    cpu_dtype.main(smoke_arguments(tiny_models, tmp_path / "cpu_dtype.json", "--steps", "3",
                                   "--only", "elite float32,elite auto", "--pair-rounds", "1",
                                   "--pair-dtypes", "float32"))
    document = read(tmp_path / "cpu_dtype.json")
    results = document["results"]
    assert set(results) == {"elite float32", "elite auto"}
    for result in results.values():
        assert len(result["stamps"]) == 3 and 0 < result["seconds_per_step"] < result["seconds"]
        assert result["peak_rss_bytes"] > 100 * 2**20  # torch alone is more: the child's own figure
    # auto is what this machine's CPU gets (the benchmark's child processes ask the real probe).
    expected = choose_dtype("auto", torch.device("cpu"), cpu_features())
    assert results["elite auto"]["precision"] == expected.line()
    assert results["elite float32"]["precision"] == "float32 (--dtype float32)"
    check = document["image_checks"]["elite: float32 vs auto"]
    assert (check["max_abs"] == 0) == (expected.dtype == torch.float32)
    assert document["ratios"]["speed-up elite float32/auto"] > 0
    # The paired run: elite and diffusers in one process, one image each after the warm-up round,
    # 3 steps of which the 2 intervals after the first count.
    paired = document["paired"]
    assert set(paired) == {"float32"}
    for side in ("elite", "diffusers"):
        assert len(paired["float32"]["intervals"][side]["wall"]) == 2 and paired["float32"][side]["cpu"] > 0
    assert document["ratios"]["paired time elite/diffusers float32"] > 0
    assert all(entry["met"] is None for entry in document["targets"])


@pytest.mark.parametrize(
    "value, limit, at_most, applies, met",
    [(1.0, 1.1, True, True, True), (1.2, 1.1, True, True, False), (2.5, 2.0, False, True, True),
     (1.5, 2.0, False, True, False), (1.0, 1.1, True, False, None), (None, 1.1, True, True, None)],
)
def test_targets_only_count_when_they_apply(value, limit, at_most, applies, met):
    assert target("t", value, limit, at_most=at_most, applies=applies)["met"] is met


def test_tracked_peak_bytes_counts_weights_and_the_largest_live_set_of_new_tensors():
    import torch

    from benchmarks.harness import tracked_peak_bytes

    model = torch.nn.Sequential(torch.nn.Linear(100, 400), torch.nn.GELU(), torch.nn.Linear(400, 100))
    inputs = torch.randn(32, 100)
    weights = sum(p.numel() * 4 for p in model.parameters())

    def forward():
        with torch.no_grad():
            return model(inputs)

    # The first layer's output and the GELU's are alive together; the last output is smaller.
    assert tracked_peak_bytes(forward, [model]) == weights + 2 * 32 * 400 * 4

    def one_temporary_at_a_time():
        for _ in range(3):
            temporary = inputs * 2.0  # freed before the next one is made
            del temporary

    assert tracked_peak_bytes(one_temporary_at_a_time, []) == 32 * 100 * 4


def test_generation_weights_are_what_a_generation_only_process_keeps_on_the_device(loaded_models):
    """(b) and (c) are measured as `elite gen` runs: the mappers' MLPs stay in CPU memory (load_models
    keeps them there until the first encode), only their key/value layers count."""
    resident = {id(tensor) for module in generate.generation_modules(loaded_models) for tensor in module.parameters()}
    for mapper in (loaded_models.global_mapper, loaded_models.local_mapper):
        for mlp in mapper.mapping_modules():
            assert all(id(tensor) not in resident for tensor in mlp.parameters())
        for layer in generate.key_value_layers(mapper):
            assert id(layer.weight) in resident
    assert all(id(tensor) in resident for tensor in loaded_models.unet.parameters())


def test_gpu_run_script_parses_and_refuses_unknown_parts():
    """benchmarks/gpu/run.sh is what a session with a lent GPU runs; a syntax error there would
    waste device time that cannot be had back."""
    import subprocess

    script = REPO / "benchmarks" / "gpu" / "run.sh"
    for path in (script, script.with_name("fetch-wheels.sh")):
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    refused = subprocess.run(["bash", str(script), "3"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage: bash benchmarks/gpu/run.sh 1|2" in refused.stdout


def test_ui_overhead_smoke_times_both_sides_with_the_browser(tiny_models, tmp_path):
    """The web UI benchmark in a subprocess (it sets the ELITE_* settings of its own process): one
    generation a side, the page's made through a real click in Debian's chromium."""
    import subprocess
    import sys

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("needs Debian's chromium (/usr/bin/chromium)")
    pytest.importorskip("gradio", reason="needs the ui extra")
    pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    json_path = tmp_path / "ui_overhead.json"
    done = subprocess.run([sys.executable, "benchmarks/ui_overhead.py", "--runs", "1", "--steps", "2", "--size", "64",
                           "--models-dir", str(tiny_models.base_model.parent), "--json", str(json_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(json_path.read_text())
    runs = payload["runs"]
    assert len(runs["api_s"]) == len(runs["ui_s"]) == 1 and min(runs["api_s"] + runs["ui_s"]) > 0
    assert payload["ratio_ui_over_api"] == pytest.approx(runs["ui_s"][0] / runs["api_s"][0])
    # The CPU figures cover the measured generations (the warm-ups left out), the browser's included.
    assert len(payload["chromium_cpu_s"]["during_ui"]) == len(payload["server_process_cpu_s"]["during_ui"]) == 1
    assert payload["server_process_cpu_s"]["during_ui"][0] > 0
    assert "ratio UI / API" in done.stdout


def test_modes_smoke(tiny_models, tmp_path):
    from benchmarks import modes

    payload = modes.main(smoke_arguments(tiny_models, tmp_path / "modes.json", "--runs", "1", "--warmup", "0"))
    document = read(tmp_path / "modes.json")
    assert set(document["results"]) == {"img2img", "inpaint", "canny"} == set(payload["results"])
    for entry in document["results"].values():
        assert len(entry["times_s"]["a"]) == len(entry["times_s"]["b"]) == 1
        assert entry["ratio b/a"] == entry["median_s"]["b"] / entry["median_s"]["a"] > 0
