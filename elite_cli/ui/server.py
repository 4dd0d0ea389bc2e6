"""Starting and stopping the web UI's server: where it listens, who may use it, and that it never
reaches the network (no analytics, no version check, no web fonts, no share tunnel)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from elite_cli.errors import InputError

if TYPE_CHECKING:
    import gradio as gr

    from elite_cli.api import Session
    from elite_cli.ui.worker import SessionWorker

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "100mb"  # a concept picture is never that large; the API refuses over 90 megapixels anyway
UI_EXTRA_HINT = "install it with: pip install 'elite-cli[ui]'"
# Browser tabs whose state (history rows, selection) the server keeps; the oldest is dropped first.
# Gradio keeps 10,000, each with a copy of the page's whole configuration: `elite ui` grew with every
# visit. One person's tabs never come near this.
SESSIONS_KEPT = 64
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def require_gradio() -> None:
    """Fail with one line when the `ui` extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise InputError(f"`elite ui` needs Gradio, which is not installed; {UI_EXTRA_HINT}.")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'user:password' -> ('user', 'password'); the password may itself hold ':'."""
    if value is None:
        return None
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise InputError("--auth must be user:password (both non-empty), e.g. --auth me:some-long-secret.")
    return user, password


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def allowed_host_names(host: str) -> set[str] | None:
    """The names a request's Host header may carry for a server bound to `host`: that address and
    localhost's names. None (any name) when it listens on every interface, where the machine's
    names and addresses cannot all be known. Refusing the others stops DNS rebinding: a web page
    whose host name is re-pointed at 127.0.0.1 would otherwise drive the UI from the user's browser."""
    if host in WILDCARD_HOSTS:
        return None
    return {host.lower().strip("[]"), "localhost", "127.0.0.1", "::1"}


def host_name(header: str) -> str:
    """'example.org:7860' -> 'example.org'; '[::1]:7860' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: a request (HTTP or websocket) whose Host is not an allowed name gets 421."""

    def __init__(self, app, allowed: set[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = (f"elite ui: Host '{name}' is not this server's address; open "
                        "http://127.0.0.1:PORT/ (or the address given to --host).\n").encode()
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def check_port(host: str, port: int) -> int:
    """The port to listen on: `port`, or a free one for 0. Fails with one line when it is taken,
    before Gradio tries it (its own message names a range and suggests another env variable)."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be from 1 to 65535 (0: any free port), not {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise InputError(f"--host '{host}' is not an address of this machine; use 127.0.0.1 (the default) "
                             "or 0.0.0.0 (every interface).") from None
        except OSError as error:
            if port == 0:
                raise InputError(f"cannot listen on {host} ({error.strerror}); check --host.") from None
            raise InputError(f"port {port} on {host} is in use or not allowed ({error.strerror}); pass another "
                             "--port, or --port 0 for any free one.") from None
        return probe.getsockname()[1]


def quiet_gradio() -> None:
    """Before Gradio is imported: no usage analytics and no version check (both call the network)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass
class RunningUi:
    """A started UI: its address, and how to stop it."""

    url: str
    port: int
    page: "gr.Blocks"
    worker: "SessionWorker"
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        self.page.close()
        for callback in self.stop_callbacks:
            callback()


def start(session: "Session", *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          auth: tuple[str, str] | None = None, preload: bool = True,
          on_preload_error: Callable[[BaseException], None] | None = None) -> RunningUi:
    """Serve the UI for `session` in this process's background threads; returns once it listens."""
    require_gradio()
    port = check_port(host, port)
    quiet_gradio()
    from elite_cli.ui.actions import Actions
    from elite_cli.ui.page import CSS, Files, build_page, theme
    from elite_cli.ui.worker import SessionWorker

    worker = SessionWorker(session)
    output_dir = Path(worker.call(lambda opened: opened.setting("output_dir"))).expanduser()
    if preload:
        # The models load once, now, in the session's thread: the first click does not wait for
        # them, and a problem (a model not downloaded yet) is also said when a button needs them.
        loading = worker.submit(lambda opened: opened.models)
        if on_preload_error is not None:
            loading.add_done_callback(lambda done: done.exception() and on_preload_error(done.exception()))
    files = Files([output_dir])
    page = build_page(Actions(worker), files)
    page.queue(default_concurrency_limit=1)
    allowed = allowed_host_names(host)
    from starlette.middleware import Middleware

    middleware = [Middleware(HostCheck, allowed=allowed)] if allowed is not None else []
    page.launch(server_name=host, server_port=port, auth=auth, share=False, quiet=True, show_error=False,
                prevent_thread_lock=True, inbrowser=False, theme=theme(), css=CSS, allowed_paths=[str(output_dir)],
                max_file_size=MAX_UPLOAD, ssr_mode=False, footer_links=[], enable_monitoring=False, mcp_server=False,
                pwa=False, app_kwargs={"middleware": middleware}, state_session_capacity=SESSIONS_KEPT)
    shown_host = host if is_loopback(host) or host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{f'[{shown_host}]' if ':' in shown_host else shown_host}:{port}/"
    return RunningUi(url=url, port=port, page=page, worker=worker, stop_callbacks=[worker.close, files.close])


def serve_until_stopped(running: RunningUi) -> None:
    """Block until Ctrl+C or SIGTERM, then stop the server (the running call finishes first)."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        running.stop()
