"""The web UI's test support: `elite ui` started as a user starts it (a subprocess on the tiny
models, a free port), for the tests that drive it through a browser (test_ui_browser.py) or over
plain HTTP (test_ui_server.py); and the UI's actions over an in-process session (test_ui_actions.py,
test_ui_modes.py). Test modules import the fixtures they use from here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 180  # importing gradio and loading the models on a busy CI machine


class UiServer:
    """`elite ui --port 0` in a subprocess; `url` once it says where it listens."""

    def __init__(self, env: dict[str, str], home: Path):
        self.home = home
        self.process = subprocess.Popen([sys.executable, "-m", "elite_cli", "ui", "--port", "0"], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        found: list[str] = []
        said = threading.Event()

        def read() -> None:
            # Read on after the URL as well: a full pipe that nobody reads would block the server.
            for line in self.process.stdout:
                match = None if found else re.search(r"elite ui: (http://127\.0\.0\.1:\d+/)", line)
                if match:
                    found.append(match.group(1))
                    said.set()
            said.set()

        threading.Thread(target=read, daemon=True).start()
        said.wait(STARTUP_TIMEOUT_S)
        if not found:
            self.stop()
            pytest.fail(f"elite ui did not print its URL; stderr:\n{''.join(self.stderr)[-3000:]}")
        return found[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()



def start_ui_server(tiny_models, home: Path) -> UiServer:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ELITE_")}
    env.update(ELITE_HOME=str(home / "library"), ELITE_OUTPUT_DIR=str(home / "out"), ELITE_DEVICE="cpu",
               ELITE_BASE_MODEL=str(tiny_models.base_model), ELITE_IMAGE_ENCODER=str(tiny_models.image_encoder),
               ELITE_GLOBAL_MAPPER=str(tiny_models.global_mapper), ELITE_LOCAL_MAPPER=str(tiny_models.local_mapper),
               ELITE_SEGMENTER=str(tiny_models.segmenter),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_TEMP_DIR=str(home / "gradio-tmp"))
    return UiServer(env, home)


@pytest.fixture(scope="module")
def ui_server(tiny_models, tmp_path_factory):
    server = start_ui_server(tiny_models, tmp_path_factory.mktemp("ui-home"))
    yield server
    server.stop()
    assert server.process.returncode == 0, "".join(server.stderr)[-3000:]


@pytest.fixture
def actions(use_tiny_models, elite_home):
    from elite_cli.api import Session
    from elite_cli.ui.actions import Actions
    from elite_cli.ui.worker import SessionWorker

    worker = SessionWorker(Session())
    yield Actions(worker)
    worker.close()
