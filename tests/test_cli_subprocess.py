"""Real processes: the `elite` entry point run as users run it, Ctrl-C, and import cost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--steps", "2", "--width", "64", "--height", "64"]


def elite_command() -> list[str]:
    # `python -m elite_cli` runs the same `main` as the installed `elite` script, but is
    # guaranteed to run this checkout (another checkout may own the `elite` on PATH).
    return [sys.executable, "-m", "elite_cli"]


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def elite(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        elite_command() + [str(arg) for arg in args], cwd=cwd, env=environment(), capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_console_script_is_declared():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"elite": "elite_cli.commands:main"}


def test_add_gen_list_rm_in_real_processes(use_tiny_models, cat_picture, tmp_path: Path):
    added = elite("add", cat_picture, "--json", cwd=tmp_path)
    assert json.loads(added.stdout)["added"][0]["name"] == "mycat"
    generated = elite("gen", "<mycat> on the beach", "--seed", "3", *FAST, cwd=tmp_path)
    (path,) = generated.stdout.split()
    assert Path(tmp_path / path).parent == tmp_path / "elite-out"  # default output folder, relative to cwd
    assert "Seed: 3" in generated.stderr
    listed = elite("list", "--json", cwd=tmp_path)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["mycat"]
    elite("rm", "mycat", cwd=tmp_path)
    failed = elite("show", "mycat", cwd=tmp_path, check=False)
    assert failed.returncode == 1 and failed.stderr.startswith("Error: ") and "Traceback" not in failed.stderr


@pytest.mark.parametrize("cache", ["filled", "gone"])
def test_list_does_not_import_torch(run_cli, use_tiny_models, cat_picture, elite_home, tmp_path: Path, cache):
    assert run_cli("add", cat_picture).exit_code == 0  # in-process: the models are already loaded
    if cache == "gone":
        # The tiny mappers are .pt pickles: without the cache `elite add` filled, only torch
        # could fingerprint them, so list shows their staleness as unknown instead.
        (elite_home / "mapper-fingerprints.json").unlink()
    # CPU time, not wall time: on a machine shared with other jobs wall time says little.
    code = (
        "import sys, time\n"
        "start = time.process_time()\n"
        "sys.argv = ['elite', 'list']\n"
        "from elite_cli.commands import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules, 'SECONDS', time.process_time() - start)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=environment(), capture_output=True, text=True, check=True)
    assert "mycat" in result.stdout
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["TORCH", "False"]
    assert float(last[3]) < 1.0


def test_ctrl_c_during_gen_leaves_no_png_and_no_history(run_cli, use_tiny_models, cat_picture, tmp_path: Path):
    assert run_cli("add", cat_picture).exit_code == 0
    out = tmp_path / "out"
    # TTY_COMPATIBLE makes rich draw the progress bar into the pipe, so we can see denoising start.
    process = subprocess.Popen(
        elite_command() + ["gen", "<mycat> on the beach", "--steps", "100000", "--width", "64", "--height", "64", "-o", str(out)],
        cwd=tmp_path,
        env=environment(TTY_COMPATIBLE="1", COLUMNS="120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as in a terminal: a test run started in the background ignores SIGINT, and so would
        # its children (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = b""
        deadline = time.monotonic() + 600  # loading the models alone can take minutes on a busy machine
        os.set_blocking(process.stderr.fileno(), False)
        while b"/100000" not in seen and time.monotonic() < deadline and process.poll() is None:
            chunk = process.stderr.read()
            seen += chunk or b""
            time.sleep(0.2)
        assert b"/100000" in seen, seen.decode(errors="replace")  # denoising has started
        process.send_signal(signal.SIGINT)
        os.set_blocking(process.stderr.fileno(), True)
        # Keep reading while it exits: its progress bar writes to the pipe until it stops, and a full
        # pipe nobody reads would block it. A busy machine can take a minute to unwind torch and exit.
        _, rest = process.communicate(timeout=300)
        rest = rest.decode(errors="replace")
    finally:
        if process.poll() is None:  # failed: a 100000-step run must not outlive the test
            process.kill()
            process.wait()
    assert process.returncode == 130
    # The seed was drawn by elite and not printed yet: the hint carries it, so --resume can work.
    assert re.search(r"Interrupted; 0 images saved; to make only the missing ones, run the same command with "
                     r"--seed \d+ --resume\.\n", rest), rest
    assert "Traceback" not in rest
    assert not out.exists() or list(out.iterdir()) == []
    history = elite("history", "--json", cwd=tmp_path)
    assert json.loads(history.stdout) == []


def test_the_time_line_adds_up_from_the_process_start(use_tiny_models, cat_picture, tmp_path: Path):
    elite("add", cat_picture, "--mask", "none", cwd=tmp_path)
    started = time.perf_counter()
    generated = elite("gen", "<mycat> on the beach", "--seed", "3", *FAST, cwd=tmp_path)
    wall = time.perf_counter() - started
    found = re.search(r"^Models loaded in (\d+\.\d) s, ready (\d+\.\d) s after the command started; "
                      r"(\d+\.\d) s in all since the command started\.$", generated.stderr, re.M)
    assert found, generated.stderr
    loading, ready, whole = map(float, found.groups())
    # Each figure holds the one before it (0.1 s: their rounding), and the whole is this process's life
    # as seen from outside, interpreter start and imports included (it said 11.1 s "in all" beside a
    # model loading that claimed to include imports which had run before it started).
    assert loading <= ready + 0.1 and ready <= whole + 0.1, (loading, ready, whole)
    # The interpreter's exit after the line (torch's teardown) can take long on a loaded machine.
    assert 0.3 * wall <= whole <= wall + 0.1, (whole, wall)
