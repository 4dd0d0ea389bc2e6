"""The web UI (`elite ui`): the authors' Gradio demo and the concept library in the browser.

Layers, each importing only those below it:
- worker.py: one thread that makes every call on the API `Session` (elite_cli/api.py), so the
  models load once per server process and one generation runs at a time;
- actions.py: what each button does, as plain functions of the session (no Gradio);
- page.py: the Gradio page, wiring components to the actions;
- server.py: launching it (host, port, auth, no network access) and the `elite ui` command.
"""
