"""Shared fixtures. Tests never touch the network: models are tiny, random and built offline.

Every test gets its own empty library (ELITE_HOME) and no ELITE_* settings from the
developer's shell; tests that need models ask for `tiny_models` (built once per session,
random weights, real on-disk layouts), `tiny_spec`/`loaded_models`, or `use_tiny_models`
(the CLI's settings pointed at them).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# An empty Hugging Face cache of the tests' own (read once, when huggingface_hub is imported):
# what the developer has downloaded must not change what the tests see.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="elite-tests-hf-")
os.environ.pop("HF_HUB_CACHE", None)

REPO = Path(__file__).resolve().parent.parent

ELITE_ENVIRONMENT = (
    "ELITE_HOME",
    "ELITE_BASE_MODEL",
    "ELITE_IMAGE_ENCODER",
    "ELITE_GLOBAL_MAPPER",
    "ELITE_LOCAL_MAPPER",
    "ELITE_SEGMENTER",
    "ELITE_DEVICE",
    "ELITE_DTYPE",
    "ELITE_OUTPUT_DIR",
    "ELITE_CONTROLNET_CANNY",
    "ELITE_CONTROLNET_DEPTH",
    "ELITE_DEPTH_MODEL",
    "ELITE_INPAINT_MODEL",
)


@pytest.fixture(autouse=True)
def elite_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh library folder per test, and no settings leaking in from the environment."""
    for name in ELITE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    # Nothing in the tests may reach the network; the hub libraries honour these.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    home = tmp_path / "elite-home"
    monkeypatch.setenv("ELITE_HOME", str(home))
    # The global flags of the last command run in this process (e.g. --library) must not leak
    # into a test that calls a command without the main callback (eval's own Typer app).
    import elite_cli.commands.common

    monkeypatch.setattr(elite_cli.commands.common, "options", elite_cli.commands.common.GlobalOptions())
    return home


@pytest.fixture(scope="session", autouse=True)
def cpu_without_bfloat16():
    """`--dtype auto` on the CPU depends on the CPU (elite_cli/model/precision.py): in-process tests
    run on a stand-in CPU without native bfloat16 (float32, as every CPU got before), whatever
    machine runs them; tests of the bfloat16 path put one that has it in its place
    (`cpu_with_bfloat16`). Session-wide, so that module and session fixtures see it too."""
    from elite_cli.model import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_features_probe", lambda: CPU_WITHOUT_BFLOAT16)
        yield CPU_WITHOUT_BFLOAT16


# What torch.cpu.get_capabilities() says on an AVX512 CPU without its BF16 extension (Skylake-X,
# Ice Lake, Zen 3), plus the oneDNN answer precision.cpu_features adds; and one with it (Zen 4).
CPU_WITHOUT_BFLOAT16 = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bw": True,
                        "avx512_vnni": True, "avx512_bf16": False, "amx_bf16": False, "onednn_bf16": True}
CPU_WITH_BFLOAT16 = {**CPU_WITHOUT_BFLOAT16, "avx512_bf16": True}


@pytest.fixture
def cpu_with_bfloat16(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The CPU probe answers for a CPU that computes bfloat16 natively (AVX512-BF16)."""
    from elite_cli.model import precision

    monkeypatch.setattr(precision, "cpu_features_probe", lambda: CPU_WITH_BFLOAT16)
    return CPU_WITH_BFLOAT16


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Paths of the tiny model set (real on-disk layouts), built once per test session:
    `.base_model`, `.image_encoder`, `.global_mapper`, `.local_mapper`, `.segmenter`."""
    from elite_cli.model.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def other_tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """A second tiny set with other random weights (built once per session): its mappers make
    concepts encoded with `tiny_models` stale."""
    from elite_cli.model.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("other-tiny-models"), seed=1)


@pytest.fixture(scope="session")
def tiny_spec(tiny_models):
    from elite_cli.model.loading import ModelSpec

    return ModelSpec(
        base_model=str(tiny_models.base_model),
        image_encoder=str(tiny_models.image_encoder),
        global_mapper=str(tiny_models.global_mapper),
        local_mapper=str(tiny_models.local_mapper),
        device="cpu",
    )


@pytest.fixture(scope="session")
def loaded_models(tiny_spec):
    """The tiny models loaded once; the CLI under `use_tiny_models` gets the same cached object."""
    from elite_cli.model.loading import load_models

    return load_models(tiny_spec)


@pytest.fixture
def use_tiny_models(tiny_models, monkeypatch: pytest.MonkeyPatch):
    """Point the model settings at the tiny set through the environment, as a user would."""
    monkeypatch.setenv("ELITE_BASE_MODEL", str(tiny_models.base_model))
    monkeypatch.setenv("ELITE_IMAGE_ENCODER", str(tiny_models.image_encoder))
    monkeypatch.setenv("ELITE_GLOBAL_MAPPER", str(tiny_models.global_mapper))
    monkeypatch.setenv("ELITE_LOCAL_MAPPER", str(tiny_models.local_mapper))
    # `elite add` without a mask finds the object with this (random, deterministic) CLIPSeg.
    monkeypatch.setenv("ELITE_SEGMENTER", str(tiny_models.segmenter))
    monkeypatch.setenv("ELITE_DEVICE", "cpu")
    return tiny_models


def pixels(path: Path | str) -> bytes:
    """The RGB bytes of an image file (8-bit levels): two images are the same picture when these are equal."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def draw_object_picture(path: Path, size: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> Path:
    """A small RGB picture of a filled disc on grey: enough for the encoder to see an object."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=color)
    image.save(path)
    return path


@pytest.fixture
def cat_picture(tmp_path: Path) -> Path:
    return draw_object_picture(tmp_path / "mycat.png")


@pytest.fixture
def dog_picture(tmp_path: Path) -> Path:
    return draw_object_picture(tmp_path / "mydog.png", color=(40, 40, 200))


@pytest.fixture
def run_cli():
    """Run `elite ARGS...` in-process; returns typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from elite_cli.commands import app

    runner = CliRunner()

    def run(*args: str, **kwargs):
        return runner.invoke(app, [str(arg) for arg in args], env=kwargs.pop("env", None), **kwargs)

    return run


