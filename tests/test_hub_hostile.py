"""Downloads from a hostile or broken Hub, and a network that hangs (issues 26 and 27).

Over real HTTP against tests/hub_server.py on 127.0.0.1, each misbehaviour switched on by the test:
an ETag or commit id that is a path, a redirect to another origin, a server that stalls or cuts,
a small file that is not what its ETag says, a listing with `..` names, an endpoint that accepts
connections and never answers. Nothing of huggingface_hub or elite is patched. Timeouts are the
environment's (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT), set to 1 s here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub_server import BlackHole, HubServer
from test_hub_downloads import (CLIP, ELITE, GEN_ARGS, PROMPT, SD, hub_env, hub_models, hub_repos,  # noqa: F401 (fixture)
                                run_elite, served, written_png)

FAST = {"HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"}
WEIGHTS = f"{CLIP}/model.safetensors"  # 13 MB, in LFS
CONFIG = f"{SD}/unet/config.json"  # a small file (a git ETag)


def one_error_line(result: dict) -> str:
    """The one line a failed command printed (after any progress lines), checked for elite's "unexpected"."""
    assert result["exit_code"] == 1, result
    assert "unexpected" not in result["stderr"] + result["stdout"], result["stderr"]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result["stderr"].rstrip().endswith(errors[0]), result["stderr"]
    return errors[0]


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file() or path.is_symlink()}


@pytest.fixture(scope="module")
def cached_hub(hub_models, tmp_path_factory):
    """A Hugging Face cache with every model elite loads, from one honest `elite models download`."""
    home = tmp_path_factory.mktemp("cached-hub")
    server = HubServer(hub_repos(hub_models)).start()
    try:
        (download,) = run_elite(hub_env(home, server.url), ["models", "download"])
    finally:
        server.stop()
    assert download["exit_code"] == 0, download["stderr"]
    return home / "hf"


def copy_cache(cached_hub: Path, tmp_path: Path) -> None:
    shutil.copytree(cached_hub, tmp_path / "hf", symlinks=True)


# ---- 27.1: nothing outside the cache ------------------------------------------------------------

@pytest.mark.parametrize("where", ["etag", "commit"])
def test_an_etag_or_commit_id_that_is_a_path_writes_nothing_outside_the_cache(hub_models, tmp_path, where):
    repos = hub_repos(hub_models)
    # From the repo's blobs/ (or snapshots/) folder up to tmp_path, then into tmp_path/outside.
    escape = "../../../../outside/PWNED"
    server = HubServer(repos)
    if where == "etag":
        server.etags[CONFIG] = escape
    else:
        repos[SD].sha = escape
    server.start()
    try:
        (download,) = run_elite(hub_env(tmp_path, server.url), ["models", "download"])
    finally:
        server.stop()
    line = one_error_line(download)
    if where == "etag":
        assert line == (f"Error: the server at {server.url} sent the base model file 'unet/config.json' ({SD}) with the "
                        f"ETag '{escape}', which is not a checksum (40 or 64 hex digits); elite fetched nothing of it. "
                        "Check HF_ENDPOINT: it does not behave like a Hugging Face Hub.")
    else:
        assert line.startswith(f"Error: the server at {server.url} gave the base model '{SD}' the commit id '{escape}', "
                               "which is not one (40 hex digits)"), line
    assert not (tmp_path / "outside").exists()
    assert {name.split("/")[0] for name in files_under(tmp_path)} <= {"hf"}
    # Whatever entered the snapshots links into the cache's own blobs.
    for entry in (tmp_path / "hf" / "hub").glob("models--*/snapshots/*/**/*"):
        assert entry.resolve().is_relative_to((tmp_path / "hf" / "hub").resolve()), entry


# ---- 27.2: the token stays with the endpoint ----------------------------------------------------

def test_the_token_goes_to_the_endpoint_only_not_to_where_it_redirects(hub_models, tmp_path):
    repos = hub_repos(hub_models)
    cdn = HubServer(repos).start()
    hub = HubServer(repos, redirect_lfs_to=cdn.url).start()
    try:
        (download,) = run_elite(hub_env(tmp_path, hub.url, HF_TOKEN="hf_secret_token"), ["models", "download"])
    finally:
        hub.stop()
        cdn.stop()
    assert download["exit_code"] == 0, download["stderr"]
    assert WEIGHTS in served(cdn)  # the LFS bytes came from the other origin
    assert cdn.log and all(entry.authorization is None for entry in cdn.log)
    assert all(entry.authorization == "Bearer hf_secret_token" for entry in hub.log)
    # 26.10: a complete download leaves no lock or partial file beside the blobs.
    leftovers = [path.name for path in (tmp_path / "hf" / "hub").glob("models--*/blobs/*") if "." in path.name]
    assert leftovers == []


# ---- 27.3 / 27.6: stalls and cuts ---------------------------------------------------------------

def test_a_stall_mid_file_goes_on_with_range_within_the_timeout(hub_models, tmp_path):
    server = HubServer(hub_repos(hub_models)).start()
    server.stall_once(WEIGHTS, after=1000)  # 1,000 bytes, then silence until the test ends
    try:
        started = time.monotonic()
        (download,) = run_elite(hub_env(tmp_path, server.url, **FAST), ["models", "download"])
        seconds = time.monotonic() - started
    finally:
        server.stop()
    assert download["exit_code"] == 0, download["stderr"]
    ranges = [entry.range for entry in server.log if entry.method == "GET" and entry.path.endswith(
        "/model.safetensors") and entry.path.startswith(f"/{CLIP}/")]
    assert ranges == [None, "bytes=1000-"]
    assert seconds < 60  # it used to wait for ever; the stall itself costs about one second


@pytest.mark.parametrize("misbehaviour", ["stall", "cut"])
def test_a_server_that_keeps_stalling_or_cutting_ends_in_one_line_saying_so(hub_models, tmp_path, misbehaviour):
    server = HubServer(hub_repos(hub_models))
    (server.stall_always if misbehaviour == "stall" else server.cut_always)[WEIGHTS] = 1000
    server.start()
    size = len(server.repos[CLIP].files["model.safetensors"])
    try:
        started = time.monotonic()
        (download,) = run_elite(hub_env(tmp_path, server.url, **FAST), ["models", "download"])
        seconds = time.monotonic() - started
    finally:
        server.stop()
    line = one_error_line(download)
    file = f"the image encoder file 'model.safetensors' ({CLIP})"
    if misbehaviour == "stall":
        what = (f"stopped sending {file} at 1000 of {size} bytes (nothing for 1 s, HF_HUB_DOWNLOAD_TIMEOUT, "
                "3 tries in a row)")
    else:
        what = f"cut {file} short at 1000 of {size} bytes, 3 tries in a row"
    assert line == (f"Error: the server at {server.url} {what}; run the command again to go on from there, or set "
                    "HF_ENDPOINT to another mirror.")
    assert "cannot be reached" not in line and "connect to the internet" not in line
    assert seconds < 60
    # The 1,000 bytes are kept for the next run.
    (partial,) = (tmp_path / "hf" / "hub").glob("models--openai--clip-vit-large-patch14/blobs/*.elite-partial")
    assert partial.stat().st_size == 1000


def test_a_transfer_that_never_answers_names_the_download_timeout_that_governed_it(hub_models, tmp_path):
    """The file's metadata (HEAD) answers; its GET is accepted and never answered. The GET waits
    HF_HUB_DOWNLOAD_TIMEOUT, not HF_HUB_ETAG_TIMEOUT (set apart here), and the line says so."""
    server = HubServer(hub_repos(hub_models))
    server.silent_get.add(WEIGHTS)
    server.start()
    try:
        started = time.monotonic()
        (download,) = run_elite(hub_env(tmp_path, server.url, HF_HUB_ETAG_TIMEOUT="7", HF_HUB_DOWNLOAD_TIMEOUT="1"),
                                ["models", "download"])
        seconds = time.monotonic() - started
    finally:
        server.stop()
    line = one_error_line(download)
    assert line.startswith(f"Error: the image encoder '{CLIP}' is not in the Hugging Face cache and {server.url} cannot "
                           "be reached (no answer within 1 s, HF_HUB_DOWNLOAD_TIMEOUT; a stalled proxy or mirror?"), line
    assert "HF_HUB_ETAG_TIMEOUT" not in line
    gets = [entry for entry in server.log if entry.method == "GET" and entry.path.endswith(f"/{WEIGHTS.split('/')[-1]}")
            and entry.path.startswith(f"/{CLIP}/")]
    assert len(gets) == 3  # RETRIES_WITHOUT_PROGRESS tries, each cut off by the 1 s timeout
    assert seconds < 60


# ---- 27.4: small files are checked too, and a damaged cache is repaired -------------------------

def test_a_small_file_that_is_not_what_its_etag_says_is_refused_and_the_next_honest_run_repairs(hub_models, tmp_path):
    repos = hub_repos(hub_models)
    honest = repos[SD].files["unet/config.json"]
    server = HubServer(repos).start()
    server.tampered[CONFIG] = honest.replace(b'"', b"'")  # the same size, other bytes
    env = hub_env(tmp_path, server.url)
    try:
        (refused,) = run_elite(env, ["models", "download"])
        server.tampered.clear()
        (repaired,) = run_elite(env, ["models", "download"])
    finally:
        server.stop()
    line = one_error_line(refused)
    assert line.startswith(f"Error: the server at {server.url} sent the base model file 'unet/config.json' ({SD}) with "
                           "other content than its checksum"), line
    assert repaired["exit_code"] == 0, repaired["stderr"]
    cached = next((tmp_path / "hf" / "hub").glob("models--CompVis--stable-diffusion-v1-4/snapshots/*/unet/config.json"))
    assert cached.read_bytes() == honest


@pytest.mark.parametrize("damaged", [CONFIG, f"{ELITE}/checkpoints/global_mapper.pt"])
def test_a_cached_file_damaged_on_disk_names_force_which_repairs_it(hub_models, cached_hub, tmp_path, cat_picture,
                                                                    damaged):
    copy_cache(cached_hub, tmp_path)
    owner, name, path = damaged.split("/", 2)
    config = next((tmp_path / "hf" / "hub").glob(f"models--{owner}--{name}/snapshots/*/{path}"))
    honest = config.read_bytes()
    config.resolve().write_bytes(b"{ damaged")
    server = HubServer(hub_repos(hub_models)).start()
    env = hub_env(tmp_path, server.url)
    try:
        broken, force, add, gen = run_elite(env, ["add", cat_picture], ["models", "download", "--force"],
                                            ["add", cat_picture], ["gen", PROMPT, *GEN_ARGS, "-o", tmp_path / "out"])
    finally:
        server.stop()
    line = one_error_line(broken)
    assert "`elite models download --force`" in line and path.split("/")[-1] in line, line
    assert force["exit_code"] == 0, force["stderr"]
    assert served(server) == [damaged]  # every file checked, only the damaged one fetched again
    assert config.read_bytes() == honest
    assert add["exit_code"] == 0, add["stderr"]
    written_png(gen)


# ---- 27.5: names that leave their folder ---------------------------------------------------------

@pytest.mark.parametrize("name", ["tokenizer/..", "../../outside/x.json", "/etc/passwd"])
def test_a_listing_with_names_outside_the_repo_is_one_line(hub_models, tmp_path, name):
    server = HubServer(hub_repos(hub_models), extra_names={SD: [name]}).start()
    try:
        (download,) = run_elite(hub_env(tmp_path, server.url), ["models", "download"])
    finally:
        server.stop()
    line = one_error_line(download)
    assert line.startswith(f"Error: the server at {server.url} lists a file '{name}' in {SD} ("), line
    assert served(server) == []


# ---- 26.1: a network that hangs ------------------------------------------------------------------

def test_with_everything_cached_a_hanging_endpoint_is_never_asked(cached_hub, tmp_path, cat_picture):
    copy_cache(cached_hub, tmp_path)
    hole = BlackHole().start()
    try:
        started = time.monotonic()
        add, gen, listing = run_elite(hub_env(tmp_path, hole.url), ["add", cat_picture],
                                      ["gen", PROMPT, *GEN_ARGS, "-o", tmp_path / "out"], ["list", "--json"])
        seconds = time.monotonic() - started
    finally:
        hole.stop()
    assert add["exit_code"] == 0, add["stderr"]
    written_png(gen)
    assert listing["exit_code"] == 0
    assert hole.connections == 0  # decided from the cache alone
    assert seconds < 120


def test_the_web_ui_starts_with_everything_cached_and_a_hanging_endpoint(cached_hub, tmp_path):
    pytest.importorskip("gradio")
    copy_cache(cached_hub, tmp_path)
    hole = BlackHole().start()
    script = ("from elite_cli.api import Session\n"
              "from elite_cli.ui.server import start\n"
              "session = Session()\n"
              "running = start(session, port=0)\n"
              "print('loaded', running.worker.call(lambda opened: type(opened.models).__name__), flush=True)\n"
              "running.stop()\n")
    try:
        completed = subprocess.run([sys.executable, "-c", script], env=hub_env(tmp_path, hole.url), capture_output=True,
                                   text=True, timeout=180, cwd=tmp_path)
    finally:
        hole.stop()
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "loaded Models" in completed.stdout
    assert hole.connections == 0


def test_a_missing_model_and_a_hanging_endpoint_end_in_one_line_within_the_timeout(cached_hub, tmp_path, cat_picture):
    copy_cache(cached_hub, tmp_path)
    shutil.rmtree(next((tmp_path / "hf" / "hub").glob("models--CompVis--stable-diffusion-v1-4/snapshots/*/vae")))
    hole = BlackHole().start()
    try:
        started = time.monotonic()
        (add,) = run_elite(hub_env(tmp_path, hole.url, **FAST), ["add", cat_picture])
        seconds = time.monotonic() - started
    finally:
        hole.stop()
    line = one_error_line(add)
    assert line.startswith(f"Error: the base model '{SD}' is only partly in the Hugging Face cache (missing "
                           f"vae/config.json and 1 more) and {hole.url} cannot be reached (no answer within 1 s, "
                           "HF_HUB_ETAG_TIMEOUT; a stalled proxy or mirror? HF_HUB_OFFLINE=1 keeps elite to the cache)"), line
    assert "HF_ENDPOINT" in line
    assert hole.connections >= 1
    assert seconds < 60
