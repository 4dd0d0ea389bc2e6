"""Commands over the concept library: add, list, show, rm, rename, tag, export, import, check,
reencode. Registered on `elite_cli.cli.app` when that module is imported."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from elite_cli.cli import (
    JsonFlag,
    app,
    as_dict,
    check_file_exists,
    echo_json,
    format_cell,
    load_models_with_status,
    open_store,
    print_rows,
)
from elite_cli.errors import InputError

EXPORT_FORMATS = ("elite", "diffusers", "a1111")


def concept_summary(stored: Any) -> dict[str, Any]:
    """The printable fields of a stored concept (whatever record type the library returns)."""
    return as_dict(stored)


def print_table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
    if not rows:
        typer.echo(empty)
        return
    print_rows(columns, [[row.get(column) for column in columns] for row in rows])


@app.command()
def add(
    images: Annotated[list[Path], typer.Argument(help="Picture(s) of the thing, object centred.", show_default=False)],
    name: Annotated[
        Optional[str], typer.Option("--name", "-N", help="Concept name (default: the file name). One image only.")
    ] = None,
    mask: Annotated[
        Optional[Path], typer.Option("--mask", "-m", help="Object mask, white = object. One image only.")
    ] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", "-t", help="Tag to attach; repeatable.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a concept of the same name.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Encode pictures into concepts and store them in the library.

    Several images are added with one model load. A PNG with transparency needs no mask.

    Example: [bold]elite add mycat.jpg --mask mycat-mask.png --tag pets[/bold]
    """
    if len(images) > 1 and (name or mask):
        raise InputError("--name and --mask apply to one image; add images with their own name or mask one at a time.")
    for image in images:
        check_file_exists(image, "image")
    if mask is not None:
        check_file_exists(mask, "mask")
    store = open_store()
    from elite_cli.encoder import Encoder

    models, load_seconds = load_models_with_status()
    encoder = Encoder(models)
    added = []
    for image in images:
        started = time.perf_counter()
        concept = encoder.encode(image, mask=mask)
        stored = store.add(
            concept, name=name, image_path=image, mask_path=mask, tags=tuple(tag or ()), replace=replace
        )
        summary = concept_summary(stored)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        added.append(summary)
        if not as_json:
            typer.echo(f"Added <{summary.get('name')}> (id {summary.get('id')}) in {summary['seconds']:.2f}s")
    if as_json:
        echo_json({"added": added, "model_load_seconds": round(load_seconds, 3)})


@app.command("list")
def list_concepts(
    tag: Annotated[Optional[str], typer.Option("--tag", "-t", help="Only concepts with this tag.")] = None,
    pattern: Annotated[
        Optional[str], typer.Option("--match", help="Only names matching this glob, e.g. 'cat*'.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the concepts in the library.

    Example: [bold]elite list --tag pets[/bold]
    """
    rows = [concept_summary(stored) for stored in open_store().list(tag=tag, pattern=pattern)]
    if as_json:
        echo_json(rows)
        return
    print_table(rows, ["name", "id", "tags", "created"], "No concepts yet; add one with `elite add IMAGE`.")


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Show one concept: id, tags, source files, thumbnail and the models that encoded it.

    Example: [bold]elite show mycat[/bold]
    """
    details = concept_summary(open_store().get(name))
    if as_json:
        echo_json(details)
        return
    for key, value in details.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for inner_key, inner_value in value.items():
                typer.echo(f"  {inner_key}: {format_cell(inner_value)}")
        else:
            typer.echo(f"{key}: {format_cell(value)}")


@app.command("rm")
def remove(
    names: Annotated[list[str], typer.Argument(help="Concept names or ids.", show_default=False)],
    keep_sources: Annotated[
        bool, typer.Option("--keep-sources", help="Keep the stored copies of the source images.")
    ] = False,
) -> None:
    """Remove concepts from the library.

    Example: [bold]elite rm mycat oldcat[/bold]
    """
    store = open_store()
    for name in names:
        store.get(name)  # every name must exist before anything is removed
    for name in names:
        store.remove(name, keep_sources=keep_sources)
        typer.echo(f"Removed <{name}>")


@app.command()
def rename(
    old: Annotated[str, typer.Argument(help="Current name or id.", show_default=False)],
    new: Annotated[str, typer.Argument(help="New name.", show_default=False)],
) -> None:
    """Rename a concept; prompts then use the new <name>.

    Example: [bold]elite rename mycat tom[/bold]
    """
    open_store().rename(old, new)
    typer.echo(f"Renamed <{old}> to <{new}>")


@app.command("tag")
def tag_concept(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    tags: Annotated[list[str], typer.Argument(help="Tags to add (or remove with --remove).", show_default=False)],
    remove_tags: Annotated[bool, typer.Option("--remove", help="Remove these tags instead.")] = False,
) -> None:
    """Add tags to a concept (or remove them).

    Example: [bold]elite tag mycat pets black[/bold]
    """
    store = open_store()
    if remove_tags:
        store.untag(name, tags)
        typer.echo(f"Untagged <{name}>: {', '.join(tags)}")
    else:
        store.tag(name, tags)
        typer.echo(f"Tagged <{name}>: {', '.join(tags)}")


@app.command("export")
def export_concept(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.", show_default=False)],
    format: Annotated[
        str, typer.Option("--format", "-f", help="elite (full concept), diffusers or a1111 (word embedding only).")
    ] = "elite",
) -> None:
    """Write a concept to a file to share or to use elsewhere.

    Example: [bold]elite export mycat -o mycat.elite.safetensors[/bold]
    """
    if format not in EXPORT_FORMATS:
        raise InputError(f"--format '{format}' is not one of {', '.join(EXPORT_FORMATS)}.")
    open_store().export(name, output, format)
    typer.echo(f"Exported <{name}> to {output} ({format})")


@app.command("import")
def import_concept(
    file: Annotated[Path, typer.Argument(help="A file written by `elite export`.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", "-N", help="Store under this name.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a concept of the same name.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Add a concept exported from another library.

    Example: [bold]elite import mycat.elite.safetensors --name tom[/bold]
    """
    check_file_exists(file, "concept file")
    summary = concept_summary(open_store().import_concept(file, name=name, replace=replace))
    if as_json:
        echo_json(summary)
    else:
        typer.echo(f"Imported <{summary.get('name')}> (id {summary.get('id')})")


@app.command()
def check(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check the library: database, tensor files, thumbnails. Exits 1 when problems remain.

    Example: [bold]elite check --repair[/bold]
    """
    store = open_store()
    repaired = [as_dict(item) if not isinstance(item, str) else item for item in (store.repair() if repair else [])]
    problems = [as_dict(item) if not isinstance(item, str) else item for item in store.check()]
    if as_json:
        echo_json({"repaired": repaired, "problems": problems})
    else:
        for item in repaired:
            typer.echo(f"Repaired: {format_problem(item)}")
        for item in problems:
            typer.echo(f"Problem: {format_problem(item)}")
        if not problems:
            typer.echo("Library OK")
    if problems:
        raise typer.Exit(1)


def format_problem(item: Any) -> str:
    if isinstance(item, dict):
        return "; ".join(str(value) for value in item.values() if value)
    return str(item)


@app.command()
def reencode(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Concepts to re-encode (default: all).", show_default=False)
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Encode concepts again from their stored source images with the configured models.

    Needed after changing the mapper checkpoints: concepts encoded with other mappers are stale.

    Example: [bold]elite reencode mycat[/bold]
    """
    store = open_store()
    targets = list(names) if names else [concept_summary(stored)["name"] for stored in store.list()]
    for target in targets:
        store.get(target)
    if not targets:
        typer.echo("No concepts to re-encode.")
        return
    from elite_cli.encoder import Encoder

    models, _ = load_models_with_status()
    encoder = Encoder(models)
    done = []
    for target in targets:
        started = time.perf_counter()
        summary = concept_summary(store.reencode(target, encoder))
        summary["seconds"] = round(time.perf_counter() - started, 3)
        done.append(summary)
        if not as_json:
            typer.echo(f"Re-encoded <{target}> in {summary['seconds']:.2f}s")
    if as_json:
        echo_json(done)
