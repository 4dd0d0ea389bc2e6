"""`elite gen` spread over processes: same images whichever process draws them, one history row
per image, and --resume after a killed run (issue 8). Multi-process runs use torchrun's CPU/gloo
mode with the tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elite_cli.generation.plan import cut_batches, plan_generation
from elite_cli.common.outputs import read_png_parameters

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--width", "64", "--height", "64", "--steps", "2"]


@dataclass
class FakeJob:  # the plan reads only these attributes of the CLI's GenerationJob
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_images: int = 1
    steps: int = 2

    def settings(self):
        return {"steps": self.steps, "guidance_scale": 5.0, "llambda": 0.8, "width": 64, "height": 64, "scheduler": "lms"}


def test_batches_do_not_depend_on_the_number_of_processes(tmp_path):
    jobs = [FakeJob("<a> one", seed=1, num_images=5), FakeJob("<a> two", seed=9, num_images=3), FakeJob("x", steps=3, num_images=2)]
    plan = plan_generation(jobs, tmp_path, "run", batch_size=4, models={})
    assert [len(batch) for batch in plan.batches] == [4, 4, 2]  # the steps change starts a new batch
    for world in (1, 2, 3, 5):
        shares = [plan.share(rank, world) for rank in range(world)]
        dealt = sorted((image.job, image.index) for share in shares for batch in share for image in batch)
        assert dealt == sorted((image.job, image.index) for image in plan.images)  # each image exactly once
        assert sorted(map(repr, (b for share in shares for b in share))) == sorted(map(repr, plan.batches))


def test_planned_names_never_collide_with_files_or_each_other(tmp_path):
    from elite_cli.generation.plan import planned_path

    jobs = [FakeJob("same words", seed=3, num_images=2), FakeJob("same words!", seed=3, num_images=1)]
    first = plan_generation(jobs, tmp_path, "run", batch_size=2, models={})
    paths = [planned_path(first, jobs, tmp_path, image) for image in first.images]
    assert len(set(paths)) == 3
    paths[0].write_bytes(b"taken")
    again = plan_generation(jobs, tmp_path, "run2", batch_size=2, models={}, when=first.when)
    new_paths = {planned_path(again, jobs, tmp_path, image) for image in again.images}
    assert paths[0] not in new_paths and len(new_paths) == 3


def elite_environment(tiny_models, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        ELITE_HOME=str(home),
        ELITE_BASE_MODEL=str(tiny_models.base_model),
        ELITE_IMAGE_ENCODER=str(tiny_models.image_encoder),
        ELITE_GLOBAL_MAPPER=str(tiny_models.global_mapper),
        ELITE_LOCAL_MAPPER=str(tiny_models.local_mapper),
        ELITE_SEGMENTER=str(tiny_models.segmenter),
        ELITE_DEVICE="cpu",
        # The processes ask the real CPU what --dtype auto means; this test's own process runs on
        # conftest's stand-in CPU without bfloat16: float32 on both sides.
        ELITE_DTYPE="float32",
        OMP_NUM_THREADS="1",
    )
    return env


def finished_pngs(directory: Path) -> list[Path]:
    """The PNGs `elite gen` finished: Path.glob("*") also matches the hidden `.elite-partial-*` files."""
    return [path for path in directory.glob("*.png") if not path.name.startswith(".")]


def images_by_seed(directory: Path) -> dict[tuple[str, int], np.ndarray]:
    found = {}
    for path in sorted(directory.glob("*.png")):
        parameters = read_png_parameters(path)
        key = (parameters["prompt"], parameters["seed"])
        assert key not in found, f"two files for {key}"
        found[key] = np.asarray(Image.open(path))
    return found


def test_two_processes_make_exactly_the_single_process_images(run_cli, use_tiny_models, cat_picture, tmp_path, elite_home):
    assert run_cli("add", cat_picture, "--name", "mycat").exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("<mycat> on the beach\na red <mycat>\n")
    common = ["--prompts", prompts, "-n", "3", "--seed", "5", "--batch-size", "2", *SMALL]
    env = elite_environment(use_tiny_models, elite_home)  # one CPU thread each: float sums in one order
    gen = ["-m", "elite_cli", "gen", *map(str, common)]
    # The single-process run in this process (models already loaded), on one thread as well.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_cli("gen", *common, "-o", tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, single.output[-3000:]

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               *gen, "-o", str(tmp_path / "multi"), "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    reported = json.loads(result.stdout)  # only the main process prints, once every process is done
    assert sorted(item["path"] for item in reported) == sorted(str(path) for path in (tmp_path / "multi").glob("*.png"))

    single_images, multi_images = images_by_seed(tmp_path / "single"), images_by_seed(tmp_path / "multi")
    assert len(multi_images) == 6 and set(multi_images) == set(single_images)
    for key, image in single_images.items():
        assert np.array_equal(image, multi_images[key]), f"{key} differs between 1 and 2 processes"

    from elite_cli.library import ConceptStore

    rows = ConceptStore(elite_home).list_history(limit=None)
    multi_rows = [row for row in rows if str(tmp_path / "multi") in str(row.output_path)]
    assert len(multi_rows) == 6 and len({row.run_id for row in multi_rows}) == 1
    assert sorted((row.prompt, row.seed) for row in multi_rows) == sorted(multi_images)


def test_json_reports_the_path_written_when_a_planned_name_was_taken(run_cli, use_tiny_models, cat_picture, tmp_path,
                                                                    monkeypatch):
    """Another program may create a file under a planned name before elite saves there; the
    image then goes to the next free name, and --json must say which."""
    import elite_cli.generation.plan as gen_plan

    assert run_cli("add", cat_picture, "--name", "mycat").exit_code == 0
    out = tmp_path / "out"
    plan_generation_for_real = gen_plan.plan_generation

    def plan_then_take_the_first_name(jobs, directory, *args, **kwargs):
        plan = plan_generation_for_real(jobs, directory, *args, **kwargs)
        directory.mkdir(parents=True, exist_ok=True)
        gen_plan.planned_path(plan, jobs, directory, plan.images[0]).write_bytes(b"someone else's file")
        return plan

    monkeypatch.setattr(gen_plan, "plan_generation", plan_then_take_the_first_name)
    result = run_cli("gen", "<mycat> on the beach", "-n", "2", "--seed", "3", "-o", out, "--json", *SMALL)
    assert result.exit_code == 0, result.output
    paths = [Path(item["path"]) for item in json.loads(result.stdout)]
    squatted = [path for path in out.glob("*.png") if path.read_bytes() == b"someone else's file"]
    assert len(paths) == 2 and len(squatted) == 1 and squatted[0] not in paths
    assert all(read_png_parameters(path)["seed"] in (3, 4) for path in paths)


def test_resume_after_a_killed_run_writes_only_what_is_missing(run_cli, use_tiny_models, cat_picture, tmp_path, elite_home):
    assert run_cli("add", cat_picture, "--name", "mycat").exit_code == 0
    output = tmp_path / "out"
    arguments = ["-m", "elite_cli", "gen", "<mycat> on the beach", "-n", "5", "--seed", "11", "--batch-size", "1",
                 "--width", "64", "--height", "64", "--steps", "16", "-o", str(output)]
    env = elite_environment(use_tiny_models, elite_home)
    # stderr goes to a file: an unread pipe could fill up and stall the run.
    with open(tmp_path / "gen.log", "wb") as log:
        process = subprocess.Popen([sys.executable, *arguments], env=env, stdout=subprocess.DEVNULL, stderr=log)
    # Generous: on a busy 2-core machine starting the process alone can take minutes.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and len(finished_pngs(output)) < 2 and process.poll() is None:
        time.sleep(0.05)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running, f"the run ended before it was killed: {(tmp_path / 'gen.log').read_text()[-2000:]}"
    before = {path.name: path.stat().st_ino for path in finished_pngs(output)}
    assert 2 <= len(before) < 5, "the run was not killed part-way"

    resumed = run_cli("gen", "<mycat> on the beach", "-n", "5", "--seed", "11", "--batch-size", "1",
                      "--width", "64", "--height", "64", "--steps", "16", "-o", output, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"{len(before)} already there" in resumed.stderr
    after = {path.name: path.stat().st_ino for path in finished_pngs(output)}
    assert all(after[name] == inode for name, inode in before.items())  # untouched
    assert len(after) == 5
    assert sorted(seed for _, seed in images_by_seed(output)) == list(range(11, 16))
    assert not list(output.glob(".elite-partial-*"))  # the kill left no partial file behind


def test_resume_with_nothing_left_says_so_and_records_no_run(run_cli, use_tiny_models, cat_picture, tmp_path):
    assert run_cli("add", cat_picture, "--name", "mycat").exit_code == 0
    arguments = ["gen", "<mycat> on the beach", "--seed", "4", *SMALL, "-o", tmp_path / "out"]
    first = run_cli(*arguments)
    assert first.exit_code == 0, first.stderr
    assert "\n1 image in " in first.stderr and " on 1 process: " in first.stderr  # singular words
    runs = run_cli("history", "--json").stdout

    again = run_cli(*arguments, "--resume")
    assert again.exit_code == 0, again.stderr
    assert again.stderr.strip() == f"Nothing left to make: the image of this command is already in '{tmp_path / 'out'}' (--resume)."
    assert "--again" not in again.stderr
    assert run_cli("history", "--json").stdout == runs
    assert run_cli(*arguments, "-n", "2", "--resume", "--json").exit_code == 0  # makes image 2
    all_there = run_cli(*arguments, "-n", "2", "--resume")
    assert "Nothing left to make: all 2 images of this command are already in" in all_there.stderr


@pytest.mark.parametrize("gpus", [["--gpus", "2"], ["--gpus=all"]], ids=["--gpus 2", "--gpus=all"])
def test_gpus_hands_every_other_option_to_the_launched_processes_unchanged(gpus):
    """--gpus re-runs the same command line under accelerate: the mode options and their values
    (an --object of several words, repeated --control KIND=FILE, a path with a space, -n with
    the value --gpus had) reach each process as typed, and parse there to the same values."""
    import typer

    from elite_cli.commands import app
    from elite_cli.generation.workers import launch_command, without_gpus_option

    options = ["<mycat> sleeping", "--inpaint", "sofa.png", "--region", "auto", "--object", "the cat", "--strength",
               "0.7", "--control", "canny=pic.png", "--control", "depth=my pictures/room.png", "--control-scale=0.5",
               "-n", "2", "--seed", "1", "--resume"]
    argv = ["--device", "cpu", "gen", *options[:3], *gpus, *options[3:]]
    handed = without_gpus_option(argv)
    assert handed == ["--device", "cpu", "gen", *options]
    assert launch_command(2, handed)[-len(handed) - 2:] == ["-m", "elite_cli", *handed]

    gen = typer.main.get_command(app).commands["gen"]
    typed, launched = (gen.make_context("gen", arguments[3:], resilient_parsing=True).params for arguments in (argv, handed))
    assert typed.pop("gpus") == gpus[-1].removeprefix("--gpus=") and launched.pop("gpus") is None
    assert typed == launched
    assert launched["region_object"] == "the cat" and launched["control"] == ["canny=pic.png", "depth=my pictures/room.png"]


def test_resume_needs_a_seed_and_gpus_needs_cuda(run_cli, use_tiny_models):
    result = run_cli("gen", "a cat", "--resume")
    assert result.exit_code == 1 and "--resume needs the seed" in result.stderr
    pytest.importorskip("torch")
    import torch

    if not torch.cuda.is_available():
        result = run_cli("gen", "a cat", "--gpus", "all", "--seed", "1")
        assert result.exit_code == 1 and "--gpus needs CUDA GPUs" in result.stderr


def test_a_prompt_longer_than_the_window_warns_with_the_dropped_words(run_cli, use_tiny_models, cat_picture, tmp_path):
    assert run_cli("add", cat_picture, "--name", "mycat").exit_code == 0
    prompt = "<mycat> " + " ".join(["red"] * 80) + " blue"
    result = run_cli("gen", prompt, "-n", "2", "--seed", "1", *SMALL, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1, warnings
    assert "dropped" in warnings[0] and "blue" in warnings[0]
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_again_rebuilds_an_interrupted_run_whole_in_order(elite_home):
    """History rows carry their job's number and image count: images never made are not lost."""
    from elite_cli.commands.generate import jobs_from_history
    from elite_cli.library import ConceptStore

    store = ConceptStore(elite_home)
    settings = FakeJob("x").settings()
    # Rank 1 finished first; the second prompt's images 1 and 2 and all of a third prompt never came.
    for number, prompt, index in ((1, "second", 0), (0, "first", 1), (0, "first", 0)):
        store.record_generation(run_id="run-a", prompt=prompt, negative_prompt="", seed=5 + index, image_index=index,
                                parameters={**settings, "job": number, "num_images": 3}, concept_ids={},
                                output_path=None, duration_s=None)
    jobs = jobs_from_history(store, "run-a")
    assert [(job.prompt, job.seed, job.num_images) for job in jobs] == [("first", 5, 3), ("second", 5, 3)]


def test_resume_ignores_temporary_and_truncated_files(tmp_path):
    from elite_cli.generation.plan import finished_images
    from elite_cli.common.outputs import GenerationRecord, save_png

    record = GenerationRecord(prompt="p", negative_prompt="", seed=1, steps=2, guidance_scale=5.0, llambda=0.8,
                              width=64, height=64, scheduler="lms", base_model="b", image_encoder="e")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    from datetime import datetime

    saved = save_png(noise, tmp_path, record, datetime.now())
    assert len(finished_images(tmp_path)) == 1
    data = saved.read_bytes()
    (tmp_path / ".elite-partial-abc.png").write_bytes(data)  # a save killed before its rename
    saved.write_bytes(data[: len(data) // 2])  # a file cut short inside its image data
    assert finished_images(tmp_path) == set()


def test_resume_removes_only_the_partial_files_of_dead_processes(tmp_path):
    from elite_cli.common.outputs import partial_prefix, remove_abandoned_partials

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    mine = tmp_path / f"{partial_prefix()}abc123.png"
    dead = tmp_path / f"{partial_prefix().replace(f'-{os.getpid()}@', f'-{dead_pid}@')}x_y9z.png"
    other_host = tmp_path / f".elite-partial-{dead_pid}@another-host.example.qwerty.png"
    for path in (mine, dead, other_host):
        path.write_bytes(b"half a png")
    if os.name != "posix":
        pytest.skip("no harmless liveness probe off POSIX: nothing is removed")
    assert remove_abandoned_partials(tmp_path) == 1
    assert not dead.exists() and mine.exists() and other_host.exists()


def test_resume_recognises_pngs_whose_chunk_says_llambda(tmp_path):
    """Earlier versions wrote the code's `llambda` into the PNG; it says `lambda` now."""
    from datetime import datetime

    from elite_cli.generation.plan import finished_images
    from elite_cli.common.outputs import ELITE_CHUNK, GenerationRecord, save_png

    job = FakeJob("<a> one", seed=4)
    record = GenerationRecord(prompt=job.prompt, negative_prompt="", seed=4, base_model="", image_encoder="",
                              **job.settings())
    path = save_png(Image.new("RGB", (8, 8)), tmp_path, record, datetime(2026, 1, 1))
    with Image.open(path) as image:
        chunk = json.loads(image.info[ELITE_CHUNK])
    assert chunk["lambda"] == 0.8 and "llambda" not in chunk
    current = finished_images(tmp_path)
    chunk["llambda"] = chunk.pop("lambda")
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(ELITE_CHUNK, json.dumps(chunk))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert finished_images(tmp_path) == current and len(current) == 1


def draw_sofa_and_spot(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random 64 px picture to start from, and a region of it to repaint (white)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "sofa.png")
    region = np.zeros((64, 64), np.uint8)
    region[16:48, 8:40] = 255
    Image.fromarray(region).save(folder / "spot.png")
    return folder / "sofa.png", folder / "spot.png"


# `python -m elite_cli ARGS`, except that the process of rank 1 starts in the folder given first:
# there a relative path finds another file, as on a second machine started from another folder.
RANK_1_ELSEWHERE = """import os, runpy, sys
folder = sys.argv.pop(1)
if os.environ["RANK"] == "1":
    os.chdir(folder)
runpy.run_module("elite_cli", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    """A port no one listens on now: runs of the suite in other checkouts may launch at the same time."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_gen(program: list, arguments: list, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               *map(str, program), "gen", *map(str, arguments), "--json"]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def single_process_gen(run_cli, arguments: list):
    """`elite gen` in this process (models already loaded), on one thread as the launched processes are."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cli("gen", *arguments)
    finally:
        torch.set_num_threads(threads)


def tiny_modes(tiny_models, tmp_path_factory):
    """The tiny ControlNets (elite_cli/model/tiny_modes.py), built once per session."""
    from elite_cli.model.tiny_modes import build_tiny_mode_models

    return build_tiny_mode_models(tmp_path_factory.getbasetemp() / "tiny-modes-distributed", tiny_models.base_model)


@pytest.mark.parametrize("mode", ["inpaint", "img2img"])
def test_two_processes_make_the_single_process_images_from_a_picture(mode, run_cli, use_tiny_models, cat_picture,
                                                                    tmp_path, elite_home, tmp_path_factory):
    """Issue 23 under a launcher (what --gpus runs): the pictures are found from the paths as the
    user typed them, relative ones included; every process draws from the main process's record
    of them (path and sha256), reading them itself; each PNG and history row names them."""
    from elite_cli.library import ConceptStore
    from elite_cli.model.mode_options import file_sha256

    assert run_cli("add", cat_picture, "--name", "mycat").exit_code == 0
    sofa, spot = draw_sofa_and_spot(tmp_path / "pictures")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("<mycat> on a sofa\na red cushion\n")
    common = ["--prompts", prompts, "-n", "2", "--seed", "5", "--batch-size", "2", *SMALL]
    if mode == "inpaint":
        # The picture relative to the working directory, the region absolute; rank 1 starts where
        # `sofa.png` is another picture: it must still draw from the one the main process recorded.
        other_sofa, _ = draw_sofa_and_spot(tmp_path / "other", seed=1)
        script = tmp_path / "rank_1_elsewhere.py"
        script.write_text(RANK_1_ELSEWHERE)
        program = [script, other_sofa.parent]
        typed, cwd = ["--inpaint", "sofa.png", "--region", str(spot), "--strength", "0.75"], sofa.parent
        expected = {"inpaint": {"path": str(sofa), "sha256": file_sha256(sofa)},
                    "region": {"path": str(spot), "sha256": file_sha256(spot)}, "strength": 0.75}
    else:  # img2img following the picture's edges too, relative with a '..', from another folder
        (tmp_path / "elsewhere").mkdir()
        program = ["-m", "elite_cli"]
        controlnet = tiny_modes(use_tiny_models, tmp_path_factory).controlnet_canny
        assert run_cli("config", "set", "controlnet_canny", controlnet).exit_code == 0  # every process reads it
        typed = ["--init-image", "../pictures/sofa.png", "--strength", "0.6", "--control", "canny=../pictures/sofa.png"]
        cwd = tmp_path / "elsewhere"
        picture = {"path": str(sofa), "sha256": file_sha256(sofa)}
        expected = {"init_image": picture, "strength": 0.6, "control_scale": 1.0,
                    "control": [{"kind": "canny", **picture, "controlnet": str(controlnet), "is_map": False}]}
    relative = "sofa.png" if mode == "inpaint" else "../pictures/sofa.png"
    absolute = [argument.replace(relative, str(sofa)) for argument in typed]  # for the run in this process
    single = single_process_gen(run_cli, [*common, *absolute, "-o", tmp_path / "single"])
    assert single.exit_code == 0, single.output[-3000:]

    env = elite_environment(use_tiny_models, elite_home)
    result = torchrun_gen(program, [*common, *typed, "-o", tmp_path / "multi"], env, cwd)
    assert result.returncode == 0, result.stderr[-6000:]
    reported = json.loads(result.stdout)
    assert len(reported) == 4 and {Path(item["path"]).parent for item in reported} == {tmp_path / "multi"}

    single_images, multi_images = images_by_seed(tmp_path / "single"), images_by_seed(tmp_path / "multi")
    assert len(multi_images) == 4 and set(multi_images) == set(single_images)
    for key, image in single_images.items():  # the second batch is rank 1's
        assert np.array_equal(image, multi_images[key]), f"{key} differs between 1 and 2 processes"
    # And the picture really steers them: the same command without it makes other images.
    text_only = single_process_gen(run_cli, [*common, "-o", tmp_path / "text-only"])
    assert text_only.exit_code == 0
    assert all(np.abs(image.astype(int) - single_images[key].astype(int)).max() > 10
               for key, image in images_by_seed(tmp_path / "text-only").items())

    for path in finished_pngs(tmp_path / "multi"):
        assert read_png_parameters(path)["mode"] == expected, path
    rows = ConceptStore(elite_home).list_history(limit=None)
    multi_rows = [row for row in rows if str(tmp_path / "multi") in str(row.output_path)]
    single_rows = [row for row in rows if str(tmp_path / "single") in str(row.output_path)]
    assert len(multi_rows) == 4 and len({row.run_id for row in multi_rows}) == 1
    assert [row.parameters["mode"] for row in multi_rows + single_rows] == [expected] * 8


def test_resume_after_a_killed_two_process_inpainting_run(run_cli, use_tiny_models, tmp_path, elite_home):
    """Both processes killed part-way (each may leave a partial file); --resume, in one process and
    from another folder (the picture's absolute path), recognises what either process finished."""
    import psutil  # a dependency of accelerate

    sofa, spot = draw_sofa_and_spot(tmp_path / "pictures")
    output = tmp_path / "out"
    options = ["-n", "8", "--seed", "11", "--batch-size", "1", "--width", "64", "--height", "64", "--steps", "10",
               "--region", str(spot), "-o", str(output)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "elite_cli", "gen", "a red cushion", "--inpaint", "sofa.png", *options]
    with open(tmp_path / "gen.log", "wb") as log:  # a file: an unread pipe could fill up and stall the run
        process = subprocess.Popen(command, env=elite_environment(use_tiny_models, elite_home), cwd=sofa.parent,
                                   stdout=subprocess.DEVNULL, stderr=log)

    def ranks_done() -> set[int]:  # batches of one image are dealt in turn: rank 0 odd seeds, rank 1 even ones
        return {int(path.stem.rsplit("-", 1)[1]) % 2 for path in finished_pngs(output)}

    deadline = time.monotonic() + 900  # a busy 2-core machine may take minutes to start it
    while time.monotonic() < deadline and len(ranks_done()) < 2 and process.poll() is None:
        time.sleep(0.05)
    still_running = process.poll() is None
    # torchrun starts each process in a session of its own: all three are killed, torchrun first (so
    # that it restarts nothing), as a crash of the machine would stop them.
    workers = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    for worker in workers:
        worker.kill()
    process.wait()
    psutil.wait_procs(workers, timeout=60)
    assert still_running, f"the run ended before it was killed: {(tmp_path / 'gen.log').read_text()[-3000:]}"
    before = {path.name: path.stat().st_ino for path in finished_pngs(output)}
    assert ranks_done() == {0, 1} and len(before) < 8, "the run was not killed part-way"

    resumed = run_cli("gen", "a red cushion", "--inpaint", sofa, *options, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    made = json.loads(resumed.stdout)
    assert len(made) == 8 - len(before) and not {Path(item["path"]).name for item in made} & set(before)
    after = {path.name: path.stat().st_ino for path in finished_pngs(output)}
    assert len(after) == 8 and all(after[name] == inode for name, inode in before.items())  # untouched
    assert sorted(seed for _, seed in images_by_seed(output)) == list(range(11, 19))
    assert not list(output.glob(".elite-partial-*"))  # the dead processes' partial files are gone
    modes = {json.dumps(read_png_parameters(path)["mode"], sort_keys=True) for path in finished_pngs(output)}
    assert len(modes) == 1 and json.loads(modes.pop())["inpaint"]["path"] == str(sofa)
