"""`elite ui`: the web UI (elite_cli/ui/) on this process's API session. Registered on
`elite_cli.commands.common.app`; `elite_cli.commands` imports this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from elite_cli.commands.common import app, open_session
from elite_cli.common.failures import internal_message, user_message


@app.command("ui")
def ui_command(
    host: Annotated[str, typer.Option(
        metavar="<address>", help="Address to listen on; 0.0.0.0 lets other machines in (with a warning).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="<port>", help="Port to listen on (0: any free port).")] = 7860,
    auth: Annotated[Optional[str], typer.Option(
        metavar="user:password", envvar="ELITE_UI_AUTH",
        help="Ask for this user and password in the browser (env ELITE_UI_AUTH keeps it out of `ps`).")] = None,
) -> None:
    """Open elite in the browser: paint a mask, add concepts, generate, browse the history.

    Needs the `ui` extra (pip install 'elite-cli[ui]'). The models load once, when it starts;
    it listens on 127.0.0.1 only unless --host says otherwise.

    Example: elite ui --port 7860 then open http://127.0.0.1:7860/
    """
    from elite_cli.ui.server import is_loopback, parse_auth, require_gradio, serve_until_stopped, start

    require_gradio()
    credentials = parse_auth(auth)

    def preload_failed(error: BaseException) -> None:
        typer.echo(f"Warning: the models did not load ({user_message(error) or internal_message(error)}); "
                   "the page says so again when a button needs them.", err=True)

    running = start(open_session(model_loader=_plain_loader), host=host, port=port, auth=credentials,
                    on_preload_error=preload_failed)
    if not is_loopback(host):
        typer.echo(f"Warning: listening on {host}: anyone who can reach port {running.port} can use your library"
                   f"{'' if credentials else ' (no --auth is set)'}; traffic is not encrypted.", err=True)
    typer.echo(f"elite ui: {running.url}  (Ctrl+C stops it)")
    serve_until_stopped(running)


def _plain_loader(spec):
    # No spinner: the models load in the background while the page is already served.
    from elite_cli.model.loading import load_models

    return load_models(spec)
