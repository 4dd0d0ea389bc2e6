"""`elite ui` over plain HTTP, as an API client or a hostile web page reaches it: no browser. The
server is the real command in a subprocess on the tiny models (tests/ui_support.py)."""

from __future__ import annotations

import http.client
import json
import math
import urllib.parse
from pathlib import Path

import pytest

from ui_support import ui_server  # noqa: F401  (a fixture)

pytest.importorskip("gradio", reason="the UI tests need the ui extra (pip install -e '.[ui]')")

# The Generate event's inputs in order: the form, then the "Start from a picture" panel (elite_cli/ui/modes.py:
# its choice, picture, painted region, strength and control scale), left at "Only the prompt".
FORM = dict(prompt="a quiet street", negative="", images=1, seed=3, lambda_=0.8, guidance=5.0, steps=2,
            scheduler="lms", width=64, height=64, mode="Only the prompt", picture=None, painted=None, strength=0.8,
            control_scale=1.0)


def request(server, method: str, path: str, body: bytes | None = None, host: str | None = None):
    address = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if host is not None:
        headers["Host"] = host
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read().decode("utf-8", "replace")


def call(server, api_name: str, data: list) -> tuple[str, list | None]:
    """One call through Gradio's HTTP API (what gradio_client does): ("complete", outputs) or ("error", None)."""
    # json.dumps writes NaN and Infinity as JavaScript does; such a client sends them.
    status, text = request(server, "POST", f"/gradio_api/call/{api_name}", json.dumps({"data": data}).encode())
    assert status == 200, text
    event_id = json.loads(text)["event_id"]
    status, stream = request(server, "GET", f"/gradio_api/call/{api_name}/{event_id}")
    event, outputs = None, None
    for line in stream.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = line[len("data: "):]
            outputs = json.loads(payload) if payload not in ("null", "") else None
    return event, outputs


def form(**changes) -> list:
    values = {**FORM, **changes}
    return [values[key] for key in FORM]


def test_number_fields_given_nan_infinity_or_null_are_one_error_line(ui_server):
    event, outputs = call(ui_server, "generate", form())
    assert event == "complete" and "Made 1 image (seed 3)" in outputs[1]
    cases = [(dict(steps=math.nan), "Error: Steps must be a whole number, not nan."),
             (dict(width=math.inf), "Error: Width must be a whole number, not inf."),
             (dict(images=None), "Error: Images must be a whole number, not null."),
             (dict(seed=math.nan), "Error: Seed must be a whole number, not nan."),
             (dict(height="tall"), "Error: Height must be a whole number, not 'tall'."),
             (dict(guidance=-math.inf), "Error: Guidance must be a number, not -inf."),
             (dict(lambda_=math.nan), "Error: Lambda must be a number, not nan."),
             (dict(steps=2.5), "Error: Steps must be a whole number, not 2.5.")]
    for changes, expected in cases:
        event, outputs = call(ui_server, "generate", form(**changes))
        assert event == "complete", (changes, event)
        assert expected in outputs[1] and outputs[1].count("Error:") == 1, (changes, outputs)
    log = "".join(ui_server.stderr)
    assert "Traceback" not in log and "unexpected" not in log, log[-3000:]


def test_a_foreign_host_header_is_refused(ui_server):
    port = urllib.parse.urlsplit(ui_server.url).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        status, _ = request(ui_server, "GET", "/", host=host)
        assert status == 200, host
    # DNS rebinding: a page at attacker.example whose name now points at 127.0.0.1.
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}", ""):
        for path in ("/", "/gradio_api/info", "/config"):
            status, text = request(ui_server, "GET", path, host=host)
            assert status == 421 and "is not this server's address" in text, (host, path, status)
    status, _ = request(ui_server, "POST", "/gradio_api/call/generate", json.dumps({"data": form()}).encode(),
                        host="attacker.example")
    assert status == 421


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# Each history view through the API is a new session (as a new browser tab is): Gradio kept
# 10,000 sessions, each with a copy of the page's configuration and its history rows.
MEMORY_BOUND = 12 * 1024 * 1024


def test_memory_stays_flat_over_200_history_views(ui_server):
    assert call(ui_server, "generate", form(images=4, seed=20))[0] == "complete"  # rows to hold
    for _ in range(100):  # past the sessions kept: the memory now has its working size
        assert call(ui_server, "history_view", [])[0] == "complete"
    before = rss_bytes(ui_server.process.pid)
    for _ in range(200):
        assert call(ui_server, "history_view", [])[0] == "complete"
    grown = rss_bytes(ui_server.process.pid) - before
    assert grown < MEMORY_BOUND, f"the server grew by {grown / 2**20:.1f} MiB over 200 history views"
