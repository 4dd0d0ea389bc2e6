"""The ControlNet of `gen --control` comes through the Hub route like every other model: fetched
on first need over real HTTP (tests/hub_server.py on 127.0.0.1) into the Hugging Face cache,
then used from the cache offline; missing offline, one line says what and how."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import pixels
from hub_server import HubRepo, HubServer, folder_files
from test_hub_downloads import hub_env, hub_repos, run_elite, served, written_png

CANNY = "lllyasviel/sd-controlnet-canny"
GEN = ["gen", "a red cat", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3"]


def test_the_canny_controlnet_is_downloaded_once_then_used_offline(tiny_models, tmp_path):
    from elite_cli.model.tiny_modes import build_tiny_mode_models

    modes = build_tiny_mode_models(tmp_path / "modes", tiny_models.base_model)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    repos = hub_repos(tiny_models)
    repos[CANNY] = HubRepo({**folder_files(modes.controlnet_canny), "README.md": b"# ControlNet",
                            "diffusion_pytorch_model.bin": b"not for elite" * 100})
    control = ["--control", f"canny={photo}"]
    server = HubServer(repos).start()
    try:
        (first,) = run_elite(hub_env(tmp_path, server.url), [*GEN, *control, "-o", tmp_path / "first"])
    finally:
        server.stop()
    made = written_png(first)
    fetched = [path for path in served(server) if path.startswith(CANNY)]
    assert fetched == sorted(f"{CANNY}/{name}" for name in folder_files(modes.controlnet_canny))  # safetensors only

    (offline,) = run_elite(hub_env(tmp_path, server.url, offline=True), [*GEN, *control, "-o", tmp_path / "again"])
    assert pixels(written_png(offline)) == pixels(made)
    # The local folder of the same weights makes the same picture.
    (local,) = run_elite(hub_env(tmp_path, server.url, offline=True, ELITE_CONTROLNET_CANNY=str(modes.controlnet_canny)),
                         [*GEN, *control, "-o", tmp_path / "local"])
    assert pixels(written_png(local)) == pixels(made)

    # Another cache with the base models but not the ControlNet, offline: one line, nothing written.
    cache = tmp_path / "other"
    cache.mkdir()
    server = HubServer({key: value for key, value in repos.items() if key != CANNY}).start()
    try:
        (base_only,) = run_elite(hub_env(cache, server.url), [*GEN, "-o", cache / "plain"])
    finally:
        server.stop()
    written_png(base_only)
    (missing,) = run_elite(hub_env(cache, server.url, offline=True), [*GEN, *control, "-o", cache / "out"])
    assert missing["exit_code"] == 1
    assert missing["stderr"].count("\n") == 1 and CANNY in missing["stderr"], missing["stderr"]
    assert not (cache / "out").exists() or not any(Path(cache / "out").iterdir())
