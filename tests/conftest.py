"""Shared fixtures. Tests never touch the network: models are tiny, random and built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of the tiny model set (real on-disk layouts), built once per test session."""
    from elite_cli.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_models):
    from elite_cli.models import ModelSpec

    return ModelSpec(
        base_model=str(tiny_models.base_model),
        image_encoder=str(tiny_models.image_encoder),
        global_mapper=str(tiny_models.global_mapper),
        local_mapper=str(tiny_models.local_mapper),
        device="cpu",
    )


@pytest.fixture(scope="session")
def loaded_models(tiny_spec):
    from elite_cli.models import load_models

    return load_models(tiny_spec)
