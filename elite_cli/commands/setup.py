"""Set-up commands: `elite models`, `elite config`, `elite doctor`.
Registered on the apps of `elite_cli.commands.common`; `elite_cli.commands` imports this module."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from elite_cli.common import config as settings_module
from elite_cli.commands.common import (
    JsonFlag,
    app,
    check_file_exists,
    config_app,
    echo_json,
    effective_settings,
    library_dir,
    models_app,
    open_store,
    print_rows,
    setting,
)
from elite_cli.errors import InputError
from elite_cli.model.hub import prefers_fp16  # noqa: F401  (moved to hub.py; the API fetches too)

STATUS_STYLES = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "bold red")}


def print_findings(findings: list, first: str = "check") -> None:
    from rich.text import Text

    rows = []
    for finding in findings:
        label, style = STATUS_STYLES[finding.status]
        rows.append([finding.check, Text(label, style=style), finding.detail, finding.fix])
    print_rows([first, "status", "detail", "fix"], rows)


@models_app.callback()
def models_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the configured models, where each setting came from, and whether each is present.

    Example: elite models
    """
    if ctx.invoked_subcommand is not None:
        return
    from elite_cli.commands.doctor import model_findings

    findings = model_findings(effective_settings())
    if as_json:
        echo_json([asdict(finding) for finding in findings])
    else:
        print_findings(findings, first="setting")  # rows are settings here, as in `elite config`


def download_with_progress(plans: list, show: bool = True) -> None:
    """Fetch what the plans lack, with the total size first and a progress bar on stderr."""
    from elite_cli.commands.common import stderr_console
    from elite_cli.commands.doctor import human_size
    from elite_cli.model.hub import cache_dir, endpoint, fetch

    plans = [plan for plan in plans if plan.to_fetch]
    if not plans:
        return
    total = sum(plan.fetch_bytes for plan in plans)
    count = sum(len(plan.to_fetch) for plan in plans)
    console = stderr_console()
    if not show:
        fetch(plans)
        return
    parts = ", ".join(f"{plan.label} {plan.repo_id} ({human_size(plan.fetch_bytes)})" for plan in plans)
    console.print(f"Downloading {count} file{'s' if count != 1 else ''} ({human_size(total)}) from {endpoint()} "
                  f"into {cache_dir()}: {parts}", markup=False, soft_wrap=True)
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("Downloading", total=total)

        def on_file(plan, item) -> None:
            progress.update(task, description=f"{plan.label}: {item.path}")

        fetch(plans, on_file, lambda size: progress.advance(task, size))


def print_download_plan(plans: list, force: bool) -> None:
    """The table of `elite models download`: each setting, where it comes from, what it takes."""
    from elite_cli.commands.doctor import human_size

    rows = []
    for plan in plans:
        if plan.state == "folder":
            rows.append([plan.key, plan.value, "local", "", ""])
        elif plan.recheck:
            rows.append([plan.key, plan.value, "check", human_size(plan.fetch_bytes), f"{len(plan.files)} to check"])
        elif not plan.needs_fetch:
            rows.append([plan.key, plan.value, "cached", human_size(plan.cached_bytes), ""])
        else:
            rows.append([plan.key, plan.value, "download", human_size(plan.fetch_bytes),
                         f"{len(plan.to_fetch)} of {len(plan.files)}"])
    print_rows(["setting", "value", "source", "size", "files to fetch"], rows)
    total = sum(plan.fetch_bytes for plan in plans)
    if force:
        typer.echo(f"To check against the Hub's checksums: {human_size(total)} (what does not match is downloaded anew).")
    else:
        typer.echo(f"To download: {human_size(total)}." if total else "Nothing to download.")


def download_settings(spec, modes: bool) -> dict[str, str]:
    """{setting: value} of what `models download` fetches."""
    values = {key: getattr(spec, key) for key in ("base_model", "image_encoder", "global_mapper", "local_mapper")}
    values["segmenter"] = setting("segmenter")  # `elite add` finds objects with it (automatic masks)
    if modes:  # docs/modes.md: otherwise each is fetched by the first `gen` that needs it
        values.update({key: setting(key) for key in ("controlnet_canny", "controlnet_depth", "depth_model",
                                                     "inpaint_model")})
    return values


@models_app.command("download")
def models_download(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be downloaded.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Ask the Hub even when everything is cached, check every "
                                        "cached file against its checksum and download the damaged ones anew.")] = False,
    modes: Annotated[bool, typer.Option("--modes", help="Also the ControlNets and depth model of `gen --control` "
                                        "(and inpaint_model when set).")] = False,
) -> None:
    """Download every model the settings name into the Hugging Face cache, then check they load.

    Fetches only what elite loads (no safety checker, one copy of the weights: safetensors, the
    fp16 variant where the weights run in fp16). Ctrl-C stops it; run it again to resume. Every
    file is checked against its checksum before it enters the cache; --force checks the cached
    ones too (a file damaged on disk) and fetches what does not match.

    Example: elite models download
    """
    from elite_cli.commands.common import model_spec
    from elite_cli.commands.doctor import human_size
    from elite_cli.model.hub import hub_plan, plans_for

    spec = model_spec()
    plans = plans_for(download_settings(spec, modes), encoding=True)
    if force or any(plan.needs_fetch for plan in plans):
        fp16 = prefers_fp16(spec.device, spec.dtype)
        plans = [hub_plan(plan, fp16, recheck=force) for plan in plans]
    print_download_plan(plans, force)
    if dry_run:
        for plan in plans:
            for item in plan.to_fetch:
                typer.echo(f"{plan.repo_id}/{item.path}  {human_size(item.size or 0)}")
        return
    download_with_progress(plans)
    from elite_cli.commands.common import load_models_with_status

    models, _ = load_models_with_status(spec)
    models.image_encoder  # the weights `elite add` needs load on first use: check them too
    from elite_cli.model.segment import load_segmenter

    load_segmenter(setting("segmenter"), spec.device, spec.dtype)
    typer.echo("Every model loads; `elite add` and `elite gen` can now run offline (HF_HUB_OFFLINE=1).")


@models_app.command("import")
def models_import(
    global_checkpoint: Annotated[
        Path, typer.Argument(help="Reference global_mapper.pt (or .safetensors).", show_default=False)
    ],
    local_checkpoint: Annotated[
        Path, typer.Argument(help="Reference local_mapper.pt (or .safetensors).", show_default=False)
    ],
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite mappers already imported.")] = False,
) -> None:
    """Convert the reference ELITE mapper checkpoints to safetensors in the library's models folder.

    Example: elite models import global_mapper.pt local_mapper.pt
    """
    check_file_exists(global_checkpoint, "global mapper checkpoint")
    check_file_exists(local_checkpoint, "local mapper checkpoint")
    models_dir = library_dir() / settings_module.MODELS_DIR_NAME
    targets = [
        ("global", global_checkpoint, models_dir / settings_module.GLOBAL_MAPPER_FILE),
        ("local", local_checkpoint, models_dir / settings_module.LOCAL_MAPPER_FILE),
    ]
    if not replace:
        for _, _, target in targets:
            if target.exists():
                raise InputError(
                    f"'{target}' already exists; pass --replace to overwrite it (concepts encoded with it become stale)."
                )
    from elite_cli.model.mappers import convert_reference_checkpoint

    models_dir.mkdir(parents=True, exist_ok=True)
    # Convert both next to their targets before renaming either: a refused or interrupted
    # import leaves the old pair intact rather than a new global mapper beside an old local one.
    partials = [target.with_name(f".{target.name}.partial") for _, _, target in targets]
    try:
        fingerprints = [convert_reference_checkpoint(source, partial, role)
                        for (role, source, _), partial in zip(targets, partials)]
        for partial, (_, _, target), fingerprint in zip(partials, targets, fingerprints):
            partial.replace(target)
            typer.echo(f"{target}  {fingerprint}")
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    for role, _, target in targets:
        note = _mapper_override_note(f"{role}_mapper", target)
        if note:
            typer.echo(note, err=True)


def _mapper_override_note(key: str, imported: Path) -> str | None:
    """A note when the setting `key` points elsewhere, so the file just imported is not the one used."""
    item = effective_settings()[key]
    # Resolved settings are absolute or relative to the cwd (config.toml's were joined to the
    # library already), like `imported`: joining a relative ELITE_HOME again named another file.
    configured = Path(item.value).expanduser()
    if configured.resolve() == imported.resolve():
        return None
    how = {"flag": f"leave out --{key.replace('_', '-')}", "default": ""}.get(item.source)
    if how is None:
        how = (f"unset {item.source.split()[1]}" if item.source.startswith("env ")
               else f"run `elite config unset {key}`")
    return (f"Note: {key} is set to '{item.value}' ({item.source}), so that file is used, not the one imported; "
            f"{how} to use the imported one.")


@models_app.command("tiny")
def models_tiny(
    directory: Annotated[Path, typer.Argument(help="Folder to create the tiny models in.", show_default=False)],
    use: Annotated[bool, typer.Option("--use", help="Also point this library's config.toml at them.")] = False,
) -> None:
    """Build a tiny random model set (seconds, offline) to try every command without downloads.

    Also builds tiny metric models for `elite eval` (in DIRECTORY/metrics), and ControlNets, a depth
    model and a 9-channel inpainting model for `elite gen`'s modes (in DIRECTORY/modes). The images it makes
    are noise and the scores meaningless: it is for smoke tests, not pictures.

    Example: elite models tiny ./tiny --use
    """
    from elite_cli.evaluation.tiny_metric_models import build_tiny_metric_models
    from elite_cli.model.tiny import build_tiny_models

    from elite_cli.model.tiny_modes import build_tiny_mode_models

    tiny = build_tiny_models(directory)
    metrics = build_tiny_metric_models(Path(directory) / "metrics")
    modes = build_tiny_mode_models(Path(directory) / "modes", tiny.base_model)
    values = {
        "base_model": str(Path(tiny.base_model).resolve()),
        "image_encoder": str(Path(tiny.image_encoder).resolve()),
        "global_mapper": str(Path(tiny.global_mapper).resolve()),
        "local_mapper": str(Path(tiny.local_mapper).resolve()),
        "segmenter": str(Path(tiny.segmenter).resolve()),
        "eval_clip_model": str(metrics.clip.resolve()),
        "eval_dino_model": str(metrics.dino.resolve()),
        "controlnet_canny": str(modes.controlnet_canny.resolve()),
        "controlnet_depth": str(modes.controlnet_depth.resolve()),
        "depth_model": str(modes.depth_model.resolve()),
    }
    if use:
        for key, value in values.items():
            path = settings_module.set_config_value(library_dir(), key, value)
        typer.echo(f"Wrote the tiny model paths to {path}")
    else:
        for key, value in values.items():
            typer.echo(f"export {settings_module.SETTINGS_BY_KEY[key].env}={value}")


@config_app.callback()
def config_show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show every setting's effective value and where it came from (flag, env, config file, default).

    Example: elite config
    """
    if ctx.invoked_subcommand is not None:
        return
    resolved = effective_settings()
    library = library_dir()
    if as_json:
        echo_json(
            {
                "library": str(library),
                "library_source": _library_source(),
                "config_file": str(settings_module.config_path(library)),
                "settings": {key: {"value": item.value, "source": item.source} for key, item in resolved.items()},
            }
        )
        return
    rows = [["library", library, _library_source()]]
    rows += [[key, item.value, item.source] for key, item in resolved.items()]
    print_rows(["setting", "value", "source"], rows)
    typer.echo(f"Config file: {settings_module.config_path(library)}")


def _library_source() -> str:
    """Where the library folder came from, in the words config sources use ('env VAR', ...)."""
    import os

    from elite_cli.commands.common import options

    if options.library is not None:
        return "flag"
    return "env ELITE_HOME" if os.environ.get("ELITE_HOME", "").strip() else "default"


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="Setting name, as `elite config` lists it.", show_default=False)],
    value: Annotated[str, typer.Argument(help="New value.", show_default=False)],
) -> None:
    """Store a setting in the library's config.toml (flags and environment still win).

    Example: elite config set device cuda
    """
    path = settings_module.set_config_value(library_dir(), key, value)
    typer.echo(f"{key} = {value}  ({path})")


@config_app.command("unset")
def config_unset(
    key: Annotated[str, typer.Argument(help="Setting name.", show_default=False)],
) -> None:
    """Remove a setting from config.toml so its default applies again.

    Example: elite config unset device
    """
    path, removed = settings_module.unset_config_value(library_dir(), key)
    if removed:
        typer.echo(f"Removed {key} from {path}")
    else:
        typer.echo(f"{key} is not set in {path}; nothing to remove")


@app.command()
def doctor(as_json: JsonFlag = False) -> None:
    """Check Python, torch, CUDA, xformers, the device, the models and the library, with a fix for each problem.

    Exits 1 when something would stop `elite add` or `elite gen`.

    Example: elite doctor
    """
    from elite_cli.commands.doctor import FAIL, Finding, environment_findings, library_findings, model_findings

    try:
        resolved = effective_settings()
    except InputError as error:
        # A bad setting is exactly what doctor is for: report it and check everything else.
        message = str(error).rstrip(".")
        # `elite config set` reads the config file first, so it cannot mend a broken one.
        fix = ("edit that config file, or delete it to start from the defaults" if message.startswith("config file ")
               else "change it with `elite config set KEY VALUE`, or fix the flag or environment variable named")
        findings = [Finding("settings", FAIL, message, fix)]
        findings += environment_findings("auto")
    else:
        findings = environment_findings(resolved["device"].value, resolved["dtype"].value)
        findings += model_findings(resolved)
    findings += library_findings(library_dir(), open_store)
    if as_json:
        echo_json([asdict(finding) for finding in findings])
    else:
        print_findings(findings)
    if any(finding.status == FAIL for finding in findings):
        raise typer.Exit(1)


