"""A new user's first runs, against a Hub over real HTTP (tests/hub_server.py on 127.0.0.1).

huggingface_hub, transformers and diffusers run their own code: nothing is patched. The server
serves the tiny model set under the default repo ids, plus what elite must not fetch (a safety
checker, a feature extractor, weights in other formats and precisions). Each scenario runs in a
fresh process (tests/elite_commands.py) because huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE
and HF_HUB_OFFLINE once, at import; that also keeps the conftest's HF_HUB_OFFLINE=1 out of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import pixels
from hub_server import HubRepo, HubServer, folder_files

SD, CLIP, ELITE = "CompVis/stable-diffusion-v1-4", "openai/clip-vit-large-patch14", "ELITE-library/ELITE"
SEGMENTER = "CIDAS/clipseg-rd64-refined"
DRIVER = Path(__file__).with_name("elite_commands.py")
# huggingface_hub writes a download to disk in chunks of this size: a cut resumes from the last one.
DOWNLOAD_CHUNK = 10 * 1024 * 1024
PROMPT = "<mycat> on the beach"
GEN_ARGS = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "3"]
JUNK = b"not for elite" * 100


@pytest.fixture(scope="module")
def hub_models(tiny_models, tmp_path_factory):
    """The tiny model set, with a CLIP vision tower whose weights (13 MB) are larger than one
    download chunk, so that a download cut in the middle of them resumes with a Range request."""
    import dataclasses

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig.from_pretrained(tiny_models.image_encoder)
    config.intermediate_size = 2048
    torch.manual_seed(1)
    vision = tmp_path_factory.mktemp("hub-models") / "clip-vision"
    CLIPVisionModel(config).save_pretrained(vision)
    assert (vision / "model.safetensors").stat().st_size > DOWNLOAD_CHUNK + 100_000
    return dataclasses.replace(tiny_models, image_encoder=vision)


def hub_repos(models, gated: bool = False) -> dict[str, HubRepo]:
    sd = folder_files(Path(models.base_model))
    sd.update({"README.md": b"# SD", "safety_checker/config.json": b"{}", "safety_checker/model.safetensors": JUNK,
               "feature_extractor/preprocessor_config.json": b"{}", "unet/diffusion_pytorch_model.bin": JUNK,
               "unet/diffusion_pytorch_model.fp16.safetensors": JUNK, "text_encoder/pytorch_model.bin": JUNK,
               "vae/diffusion_pytorch_model.fp16.safetensors": JUNK, "v1-variants-scores.jpg": JUNK})
    clip = folder_files(Path(models.image_encoder))
    clip.update({"pytorch_model.bin": JUNK, "tf_model.h5": JUNK, "flax_model.msgpack": JUNK, "tokenizer.json": b"{}",
                 "vocab.json": b"{}", "merges.txt": b"", "preprocessor_config.json": b"{}"})
    elite = {"checkpoints/global_mapper.pt": Path(models.global_mapper).read_bytes(),
             "checkpoints/local_mapper.pt": Path(models.local_mapper).read_bytes(), "README.md": b"# ELITE"}
    segmenter = folder_files(Path(models.segmenter))
    segmenter.update({"pytorch_model.bin": JUNK, "README.md": b"# CLIPSeg"})
    return {SD: HubRepo(sd, gated=gated), CLIP: HubRepo(clip), ELITE: HubRepo(elite), SEGMENTER: HubRepo(segmenter)}


def needed_files(models) -> list[str]:
    """What elite loads: every file of the tiny SD folder (it has nothing else), the vision
    tower's config and safetensors weights, the two mapper checkpoints, and every file of the tiny
    segmenter folder (config, safetensors weights, processor and tokenizer files: `elite add` of a
    picture without a mask finds the object with it)."""
    return sorted([f"{SD}/{name}" for name in folder_files(Path(models.base_model))]
                  + [f"{CLIP}/config.json", f"{CLIP}/model.safetensors",
                     f"{ELITE}/checkpoints/global_mapper.pt", f"{ELITE}/checkpoints/local_mapper.pt"]
                  + [f"{SEGMENTER}/{name}" for name in folder_files(Path(models.segmenter))])


def served(server: HubServer) -> list[str]:
    """`repo/path` of every file body the server sent."""
    return sorted(re.sub(r"/resolve/[^/]+/", "/", path.lstrip("/"), count=1) for path in server.downloads())


def hub_env(tmp_path: Path, url: str, offline: bool = False, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ELITE_", "HF_", "HUGGINGFACE_")) and name != "TRANSFORMERS_OFFLINE"
           and "proxy" not in name.lower()}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               ELITE_HOME=str(tmp_path / "library"), ELITE_DEVICE="cpu", HF_HUB_DISABLE_TELEMETRY="1",
               # In a fresh process --dtype auto asks the real CPU; the in-process runs compared with
               # these stand on conftest's CPU without bfloat16: float32 on both sides.
               ELITE_DTYPE="float32")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run_elite(env: dict[str, str], *commands: list) -> list[dict]:
    """Run `elite` commands one after the other in one fresh process; their results."""
    completed = subprocess.run([sys.executable, str(DRIVER), json.dumps([[str(arg) for arg in args] for args in commands])],
                               env=env, capture_output=True, text=True, timeout=300, cwd=env["HF_HOME"].rsplit("/", 1)[0])
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


def written_png(result: dict) -> Path:
    assert result["exit_code"] == 0, result["stderr"]
    return Path(next(line for line in result["stdout"].splitlines() if line.endswith(".png")))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_first_run_downloads_what_elite_loads_then_runs_from_the_cache(hub_models, tmp_path, cat_picture, run_cli,
                                                                         monkeypatch):
    server = HubServer(hub_repos(hub_models)).start()
    try:
        env = hub_env(tmp_path, server.url)
        add, gen, listing = run_elite(env, ["add", cat_picture], ["gen", PROMPT, *GEN_ARGS, "-o", tmp_path / "first"],
                                      ["list", "--json"])
    finally:
        server.stop()
    assert add["exit_code"] == 0, add["stderr"]
    assert "Added <mycat>" in add["stdout"] and f"Downloading {len(needed_files(hub_models))} files" in add["stderr"]
    assert served(server) == needed_files(hub_models)  # each once; nothing elite does not load
    first = written_png(gen)
    # `elite list` finds the converted hub mappers' fingerprints without loading anything.
    assert [item["stale"] for item in json.loads(listing["stdout"])] == [False]

    # The server is gone: the cache alone serves, with and without HF_HUB_OFFLINE.
    for offline in (False, True):
        (again,) = run_elite(hub_env(tmp_path, server.url, offline=offline),
                             ["gen", PROMPT, *GEN_ARGS, "-o", tmp_path / f"cached-{offline}"])
        assert pixels(written_png(again)) == pixels(first)

    # The same weights as local folders, with the mappers brought in by `elite models import`.
    monkeypatch.setenv("ELITE_BASE_MODEL", str(hub_models.base_model))
    monkeypatch.setenv("ELITE_IMAGE_ENCODER", str(hub_models.image_encoder))
    monkeypatch.setenv("ELITE_SEGMENTER", str(hub_models.segmenter))
    monkeypatch.setenv("ELITE_DEVICE", "cpu")
    imported = run_cli("models", "import", hub_models.global_mapper, hub_models.local_mapper)
    assert imported.exit_code == 0, imported.output
    assert run_cli("add", cat_picture).exit_code == 0
    local = run_cli("gen", PROMPT, *GEN_ARGS, "-o", tmp_path / "local")
    assert local.exit_code == 0, local.output
    local_png = Path(next(line for line in local.stdout.splitlines() if line.endswith(".png")))
    assert pixels(local_png) == pixels(first)
    from elite_cli.common.outputs import read_png_parameters

    hub_parameters, local_parameters = read_png_parameters(first), read_png_parameters(local_png)
    import_fingerprints = [line.split()[-1] for line in imported.stdout.splitlines()]
    assert [hub_parameters["global_mapper"], hub_parameters["local_mapper"]] == import_fingerprints
    assert [local_parameters["global_mapper"], local_parameters["local_mapper"]] == import_fingerprints


@pytest.mark.parametrize("offline", [False, True], ids=["no-server", "HF_HUB_OFFLINE"])
def test_with_an_empty_cache_and_no_hub_add_fails_in_one_line_and_writes_nothing(tmp_path, cat_picture, offline):
    env = hub_env(tmp_path, f"http://127.0.0.1:{free_port()}", offline=offline)
    (add,) = run_elite(env, ["add", cat_picture])
    assert add["exit_code"] == 1
    lines = add["stderr"].splitlines()
    assert len(lines) == 1, add["stderr"]
    assert lines[0].startswith(f"Error: the base model '{SD}' is not in the Hugging Face cache and "), lines[0]
    for way_out in ("connect to the internet", "HF_ENDPOINT", "`elite models download`", "--base-model"):
        assert way_out in lines[0]
    assert ("HF_HUB_OFFLINE is set" in lines[0]) == offline
    assert not (tmp_path / "library").exists()


def test_models_download_fetches_exactly_what_is_needed_after_ctrl_c_and_a_cut(hub_models, tmp_path):
    """Ctrl-C keeps the files already complete and what came of the one in flight: the next run
    asks only for the rest of it (`Range`), and a connection cut mid-file goes on from the cut."""
    repos = hub_repos(hub_models)
    server = HubServer(repos).start()
    weights = f"{CLIP}/model.safetensors"
    server.stall_once(weights, after=DOWNLOAD_CHUNK + 4096)
    env = hub_env(tmp_path, server.url)
    needed = needed_files(hub_models)
    try:
        # Ctrl-C as in a terminal: a test run started in the background ignores SIGINT, and so would
        # its children (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored).
        process = subprocess.Popen([sys.executable, "-m", "elite_cli", "models", "download"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert server.stalled.wait(120), "the download never reached the vision tower's weights"
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, stderr
        assert stderr.splitlines()[-1] == "Interrupted"
        total = sum(len(repos["/".join(name.split("/")[:2])].files[name.split("/", 2)[2]]) for name in needed)
        assert f"To download: {total / 1e6:.1f} MB." in stdout  # the size is shown before anything is fetched
        interrupted = served(server)
        (partial,) = (tmp_path / "hf" / "hub" / "models--openai--clip-vit-large-patch14" / "blobs").glob("*.elite-partial")
        kept_bytes = partial.stat().st_size
        assert 0 < kept_bytes <= DOWNLOAD_CHUNK + 4096
        server.release()
        server.cut_once(weights, after=65536)  # and now the connection drops once, mid-file
        dry, real = run_elite(env, ["models", "download", "--dry-run"], ["models", "download"])
    finally:
        server.stop()
    # One file at a time, in order: the base model and the vision config were complete.
    kept = [name for name in needed if name.startswith(SD) or name == f"{CLIP}/config.json"]
    assert interrupted == sorted(kept + [weights])
    listed = sorted(line.split()[0] for line in dry["stdout"].splitlines() if line.startswith((SD, CLIP, ELITE, SEGMENTER)))
    assert listed == sorted(set(needed) - set(kept))
    assert real["exit_code"] == 0, real["stderr"]
    assert "Every model loads" in real["stdout"]
    # Nothing kept was fetched again; the weights three times: stopped, resumed where Ctrl-C left
    # them and cut, resumed from the cut.
    assert served(server) == sorted(needed + [weights, weights])
    ranges = [entry.range for entry in server.log if entry.method == "GET" and entry.path.startswith(f"/{CLIP}/")
              and entry.path.endswith("/model.safetensors")]
    assert ranges == [None, f"bytes={kept_bytes}-", f"bytes={kept_bytes + 65536}-"]
    assert not list((tmp_path / "hf" / "hub").rglob("*.elite-partial"))
    cached = next((tmp_path / "hf" / "hub").glob("models--openai--clip-vit-large-patch14/snapshots/*/model.safetensors"))
    assert cached.read_bytes() == repos[CLIP].files["model.safetensors"]


def test_a_gated_model_names_the_licence_and_the_login(hub_models, tmp_path):
    server = HubServer(hub_repos(hub_models, gated=True)).start()
    try:
        (refused,) = run_elite(hub_env(tmp_path, server.url), ["models", "download"])
        (allowed,) = run_elite(hub_env(tmp_path, server.url, HF_TOKEN="hf_test"), ["models", "download", "--dry-run"])
    finally:
        server.stop()
    assert refused["exit_code"] == 1
    assert refused["stderr"].splitlines() == [
        f"Error: the base model '{SD}' is gated on {server.url}: accept its licence on {server.url}/{SD}, then run "
        "`hf auth login` or set HF_TOKEN."]
    assert allowed["exit_code"] == 0, allowed["stderr"]  # HF_TOKEN is sent


def test_a_damaged_partial_download_is_refused_by_its_checksum_and_fetched_anew(hub_models, tmp_path):
    repos = hub_repos(hub_models)
    weights = repos[CLIP].files["model.safetensors"]
    blobs = tmp_path / "hf" / "hub" / "models--openai--clip-vit-large-patch14" / "blobs"
    blobs.mkdir(parents=True)
    # What a run stopped half-way would have left, but with other bytes than the file's.
    etag = hashlib.sha256(weights).hexdigest()
    (blobs / f"{etag}.elite-partial").write_bytes(b"\0" * (len(weights) // 2))
    server = HubServer(repos).start()
    try:
        damaged, again = run_elite(hub_env(tmp_path, server.url), ["models", "download"], ["models", "download"])
    finally:
        server.stop()
    assert damaged["exit_code"] == 1
    assert damaged["stderr"].splitlines()[-1] == (
        f"Error: the image encoder file 'model.safetensors' ({CLIP}), resumed from the {len(weights) // 2} bytes an "
        f"earlier run kept, does not match its checksum (ETag {etag[:12]}...); elite did not keep it. Run the command "
        "again to download it anew; if it says the same, the server (HF_ENDPOINT) serves a damaged or altered file.")
    assert again["exit_code"] == 0, again["stderr"]
    assert (blobs / etag).read_bytes() == weights and not list(blobs.glob("*.elite-partial"))
