"""Files elite writes through a temporary name get the permissions the user's umask gives any
new file (tempfile.mkstemp alone makes them 0600: unreadable by a web server or the group)."""

from __future__ import annotations

import os
import stat
from datetime import datetime

import pytest
import torch
from PIL import Image

from elite_cli.model.mappers import save_mapper_state
from elite_cli.common.outputs import GenerationRecord, save_png

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_pngs_and_mapper_files_follow_the_umask(tmp_path, umask):
    record = GenerationRecord(prompt="<cat> on a beach", negative_prompt="", seed=1, steps=2, guidance_scale=5.0,
                              llambda=0.8, width=8, height=8, scheduler="lms", base_model="b", image_encoder="i",
                              global_mapper="g", local_mapper="l", elite_version="0")
    png = save_png(Image.new("RGB", (8, 8)), tmp_path / "out", record, datetime.now())
    mapper = tmp_path / "models" / "global_mapper.safetensors"
    save_mapper_state({"weight": torch.zeros(2, 2)}, mapper)
    expected = 0o666 & ~umask
    assert mode(png) == expected and mode(mapper) == expected
