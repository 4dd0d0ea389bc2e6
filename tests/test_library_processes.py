"""Several processes at once, and processes SIGKILLed in the middle of an add or a remove.

Children are forked (not spawned) so they skip the multi-second torch import; each opens its
own SQLite connection, so the locking between them is real.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import sys
import time

import numpy  # noqa: F401  imported before forking so the children inherit them
import PIL.Image  # noqa: F401
import pytest
import safetensors.torch  # noqa: F401
import torch  # noqa: F401

from elite_cli.library import ConceptStore
from library_support import child

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL are POSIX")


def start(*args, **kwargs):
    process = multiprocessing.get_context("fork").Process(target=child, args=args, kwargs=kwargs)
    process.start()
    return process


def test_eight_processes_adding_at_once(tmp_path):
    home = tmp_path / "home"  # not created yet: the processes also race to create and migrate it
    go = multiprocessing.get_context("fork").Event()
    processes = [start("add", str(home), f"concept{i}", i, start=go) for i in range(8)]
    go.set()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = ConceptStore(home)
    assert sorted(r.name for r in store.list()) == [f"concept{i}" for i in range(8)]
    assert store.check().ok


def _assert_clean_or_repaired(home):
    store = ConceptStore(home)
    report = store.check()
    if not report.ok:
        repaired = store.repair()
        assert repaired.after.ok, (report.problems, repaired.actions, repaired.after.problems)
    assert store.check().ok
    return store


# Each point is a step of the add/remove protocol; SIGKILL lands exactly there.
@pytest.mark.parametrize(
    ("command", "target", "when", "survivor"),
    [
        ("add", "os.replace", 1, None),    # before the image copy is renamed into place
        ("add", "os.replace", 3, None),    # sources placed, thumbnail not
        ("add", "os.replace", 4, None),    # everything but the concept file placed
        ("add", "insert_row", 1, "cat"),   # all files placed, row not committed: repair indexes it
        ("remove", "os.replace", 1, "cat"),  # before the file is renamed to .removed
        ("remove", "Path.unlink", 1, None),  # row deletion committed, files not yet deleted
    ],
)
def test_sigkill_at_each_step_leaves_a_repairable_library(tmp_path, command, target, when, survivor):
    home = tmp_path / "home"
    process = start(command, str(home), "cat", 1, kill=(target, when))
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    store = _assert_clean_or_repaired(home)
    assert [r.name for r in store.list()] == ([survivor] if survivor else [])
    if survivor:
        assert store.load(survivor).words.shape == (5, 32)


def test_sigkill_at_random_moments_during_churn(tmp_path):
    home = tmp_path / "home"
    ConceptStore(home).close()
    rng = random.Random(0)
    for round_number in range(6):
        process = start("churn", str(home), f"c{round_number}", round_number)
        time.sleep(0.2 + 0.5 * rng.random())
        process.kill()
        process.join(timeout=60)
        assert process.exitcode == -signal.SIGKILL
        _assert_clean_or_repaired(home)
