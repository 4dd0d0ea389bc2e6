"""Commands over the concept library: add, list, show, rm, rename, tag, export, import, check,
reencode. Each parses, calls the API (`elite_cli.api.Session`), prints. Registered on
`elite_cli.commands.common.app`; `elite_cli.commands` imports this module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from elite_cli.api import EXPORT_FORMATS  # noqa: F401  (where the CLI kept it before)
from elite_cli.commands.common import (
    JsonFlag,
    app,
    as_dict,
    echo_json,
    format_cell,
    load_models_with_status,
    model_time_line,
    open_session,
    print_rows,
    seconds_since_start,
    short_time,
)
from elite_cli.errors import InputError


def session_with_spinner():
    """The session, its models loaded behind the spinner (looked up here at call time)."""
    return open_session(model_loader=lambda spec: load_models_with_status(spec)[0])


CropOption = Annotated[str, typer.Option(
    "--crop", metavar="auto|object",
    help="auto: a square picture whole (as the ELITE reference), others squared around the object; "
         "object: the square around the object on any picture.")]


ImagesArgument = Annotated[list[Path], typer.Argument(help="Picture(s) of the thing, object centred.", show_default=False)]
NameOption = Annotated[Optional[str], typer.Option(
    "--name", "-N", metavar="<name>", help="Concept name (default: the file name). One image only.")]
MaskOption = Annotated[Optional[str], typer.Option(
    "--mask", "-m", metavar="FILE|auto|none",
    help="Object mask file (white = object; one image only), auto (find the object: the default for a "
         "picture without transparency) or none (the whole picture).")]
ObjectOption = Annotated[Optional[str], typer.Option(
    "--object", metavar="<text>", help="What the automatic mask looks for, e.g. 'a cat' (default: the main object).")]
TagsOption = Annotated[Optional[list[str]], typer.Option("--tag", "-t", metavar="<tag>", help="Tag to attach; repeatable.")]
ReplaceOption = Annotated[bool, typer.Option("--replace", help="Replace a concept of the same name.")]


@app.command()
def add(
    images: ImagesArgument, name: NameOption = None, mask: MaskOption = None, object_text: ObjectOption = None,
    tag: TagsOption = None, replace: ReplaceOption = False, crop: CropOption = "auto", as_json: JsonFlag = False,
) -> None:
    """Encode pictures into concepts and store them in the library.

    Several images are added with one model load. Without a mask, the object is found
    automatically (a PNG with transparency uses its transparency); `elite add` prints where the
    preview of the object on the picture is.

    Example: elite add mycat.jpg --object "a black cat" --tag pets
    """
    from elite_cli.model.masks import parse_mask_option

    mask_file = parse_mask_option(mask)
    mask_file = mask_file if isinstance(mask_file, Path) else None
    if len(images) > 1 and (name or mask_file):
        raise InputError("--name and --mask apply to one image; add images with their own name or mask one at a time.")
    session = session_with_spinner()
    shown = AddedConcepts(name, as_json)
    session.add_concepts(images, masks=[mask] * len(images), names=[name] * len(images), tags=tag or (),
                         replace=replace, crop=crop, object_text=object_text, on_added=shown.added,
                         on_mask=shown.chosen.append, on_warning=lambda message: typer.echo(f"Warning: {message}", err=True))
    if as_json:
        echo_json({"added": shown.summaries, "model_load_seconds": round(session.model_load_seconds or 0.0, 3),
                   "total_seconds": round(seconds_since_start(), 3)})
    else:
        typer.echo(model_time_line(session.model_load_seconds, session.models_loaded_at), err=True)


class AddedConcepts:
    """`elite add`'s lines as the API stores each concept (or its JSON summaries, printed at the end)."""

    def __init__(self, wanted_name: str | None, as_json: bool):
        self.wanted_name, self.as_json = wanted_name, as_json
        self.chosen: list = []  # each picture's ChosenMask, in order (the API's on_mask)
        self.summaries: list[dict] = []

    def added(self, stored, seconds: float) -> None:
        choice = self.chosen[len(self.summaries)]
        preview = stored.preview_path if stored.preview_path.exists() else None
        summary = as_dict(stored)
        summary.update(seconds=round(seconds, 3), mask_source=choice.source, preview_path=str(preview) if preview else None)
        self.summaries.append(summary)
        if not self.as_json:
            if stored.duplicate:
                typer.echo(already_stored(stored, self.wanted_name, "added"))
            else:
                typer.echo(f"Added <{stored.name}> (id {stored.short_id}) in {summary['seconds']:.2f}s")
            if preview:
                typer.echo(f"  preview: {preview}")


@app.command("list")
def list_concepts(
    tag: Annotated[Optional[str], typer.Option("--tag", "-t", metavar="<tag>", help="Only concepts with this tag.")] = None,
    pattern: Annotated[
        Optional[str], typer.Option("--match", metavar="<glob>", help="Only names matching this glob, e.g. 'cat*'.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the concepts in the library.

    Example: elite list --tag pets
    """
    session = open_session()
    concepts = session.concepts(tag=tag, pattern=pattern)
    stale = session.stale_flags(concepts)
    if as_json:
        echo_json([{**as_dict(stored), "stale": flag} for stored, flag in zip(concepts, stale)])
        return
    if not concepts:
        typer.echo("No concepts yet; add one with `elite add IMAGE`." if not (tag or pattern) else "No matching concepts.")
        return
    print_rows(
        ["name", "id", "tags", "created", "stale"],
        [[stored.name, stored.short_id, stored.tags, short_time(stored.created),
          {True: "yes", False: "", None: "?"}[flag]] for stored, flag in zip(concepts, stale)],
    )
    if None in stale:
        typer.echo("stale '?': not known yet; the configured mappers' fingerprints are recorded the first time a "
                   "command loads them (`elite add`, `gen`, `reencode`), or their files cannot be read.", err=True)
    mappers = session.mapper_stale_flags(concepts)
    count = sum(1 for flag in mappers if flag)
    if count:
        typer.echo(f"{count} concept{'s were' if count > 1 else ' was'} encoded with other mappers than the configured "
                   "ones (stale); `elite gen` refuses them until you run `elite reencode`.", err=True)
    count = sum(1 for stored in concepts if not stored.preprocessing_is_current())
    if count:
        typer.echo(f"{count} concept{'s were' if count > 1 else ' was'} encoded by an older elite that cropped square "
                   "pictures (stale); `elite reencode` makes the reference's concept from the stored pictures.",
                   err=True)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Show one concept: id, tags, source files, thumbnail and the models that encoded it.

    Example: elite show mycat
    """
    session = open_session()
    record = session.concept(name)
    details = as_dict(record)
    from elite_cli.model.masks import describe_mask_source

    origin = session.mask_origin(record)
    preview = record.preview_path if record.preview_path.exists() else None
    if as_json:
        details.update(origin, preview_path=str(preview) if preview else None)
        echo_json(details)
        return
    details.update(mask_source=describe_mask_source(origin), preview_path=preview)
    details.pop("duplicate", None)
    width = max(len(key) for key in details)
    for key, value in details.items():
        typer.echo(f"{key.ljust(width)}  {format_cell(value)}")



@app.command("rm")
def remove(
    names: Annotated[list[str], typer.Argument(help="Concept names or ids.", show_default=False)],
    keep_sources: Annotated[
        bool, typer.Option("--keep-sources", help="Keep the stored copies of the source images.")
    ] = False,
) -> None:
    """Remove concepts from the library.

    Example: elite rm mycat oldcat
    """
    for removed in open_session().remove(names, keep_sources=keep_sources):
        kept = removed.kept_sources
        typer.echo(f"Removed <{removed.concept.name}>" + (f"; sources kept in {kept[0].parent}" if kept else ""))


@app.command()
def rename(
    old: Annotated[str, typer.Argument(help="Current name or id.", show_default=False)],
    new: Annotated[str, typer.Argument(help="New name.", show_default=False)],
) -> None:
    """Rename a concept; prompts then use the new <name>.

    Example: elite rename mycat tom
    """
    session = open_session()
    before = session.concept(old)
    renamed = session.rename(before.id, new)
    if renamed.name == before.name:
        typer.echo(f"<{before.name}> already has that name; nothing changed")
    else:
        typer.echo(f"Renamed <{before.name}> to <{renamed.name}>")


@app.command("tag")
def tag_concept(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    tags: Annotated[list[str], typer.Argument(help="Tags to add (or remove with --remove).", show_default=False)],
    remove_tags: Annotated[bool, typer.Option("--remove", help="Remove these tags instead.")] = False,
) -> None:
    """Add tags to a concept (or remove them).

    Example: elite tag mycat pets black
    """
    session = open_session()
    had = {value.lower() for value in session.concept(name).tags}
    record = session.untag(name, *tags) if remove_tags else session.tag(name, *tags)
    # Like `rm -f`/`chmod`, asking for the state a concept is already in succeeds, but is said.
    unchanged = sorted({value for value in tags if (value.lower() in had) != remove_tags}, key=str.lower)
    if unchanged:
        listed = ", ".join(f"'{value}'" for value in unchanged)
        plural = "s" if len(unchanged) > 1 else ""
        state = f"does not have the tag{plural} {listed}" if remove_tags else f"already has the tag{plural} {listed}"
        typer.echo(f"Note: <{record.name}> {state}; nothing to {'remove' if remove_tags else 'add'} for "
                   f"{'them' if plural else 'it'}.", err=True)
    typer.echo(f"<{record.name}> tags: {', '.join(record.tags) or '(none)'}")


@app.command("export")
def export_concept(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.", show_default=False)],
    format: Annotated[
        str, typer.Option("--format", "-f", metavar="<format>", help="elite (full concept), diffusers or a1111 (word embedding only).")
    ] = "elite",
    token: Annotated[
        Optional[str], typer.Option("--token", metavar="<word>", help="Trigger word for diffusers/a1111 (default: <name> / name).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Write a concept to a file to share or to use elsewhere.

    Example: elite export mycat -o mycat.elite.safetensors
    """
    result = open_session().export(name, output, format, token=token, overwrite=overwrite)
    typer.echo(f"Exported <{name}> to {result.path} ({result.format})")
    if result.note:
        typer.echo(f"Note: {result.note}.", err=True)


def skipped_note(name: str) -> str:
    return (f"Note: skipped <{name}>: it has no stored source picture (imported concepts have none) and stays "
            f"stale; add it again from its picture (`elite add PICTURE --replace --name {name}`), or generate with "
            "it using --allow-stale.")


def already_stored(stored, wanted_name: str | None, verb: str) -> str:
    """The line for a concept the library already held; a name asked for with --name is not applied
    behind the user's back (the library holds a concept once, under one name)."""
    keeps_name = (f"; it keeps that name, run `elite rename {stored.name} {wanted_name}` to use <{wanted_name}>"
                  if wanted_name and wanted_name.lower() != stored.name.lower() else "")
    return f"Already in the library as <{stored.name}> (id {stored.short_id}); nothing {verb}{keeps_name}"


@app.command("import")
def import_concept(
    file: Annotated[Path, typer.Argument(help="A file written by `elite export`.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", "-N", metavar="<name>", help="Store under this name.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a concept of the same name.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Add a concept exported from another library.

    Example: elite import mycat.elite.safetensors --name tom
    """
    stored = open_session().import_concept(file, name=name, replace=replace)
    if as_json:
        echo_json(as_dict(stored))
    elif stored.duplicate:
        typer.echo(already_stored(stored, name, "imported"))
    else:
        typer.echo(f"Imported <{stored.name}> (id {stored.short_id})")


@app.command()
def check(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check the library: database, tensor files, thumbnails. Exits 1 when problems remain.

    Example: elite check --repair
    """
    outcome = open_session().check(repair=repair)
    report, actions, quarantine = outcome.report, outcome.repaired, outcome.quarantine
    if as_json:
        echo_json(
            {
                "concepts": report.concepts,
                "files": report.files,
                "repaired": actions,
                "quarantine": str(quarantine) if quarantine else None,
                "problems": [as_dict(problem) for problem in report.problems],
            }
        )
    else:
        for action in actions:
            typer.echo(f"Repaired: {action}")
        if quarantine:
            # Only a lost concept's source picture is worth adding again (not a stray temp file).
            pictures = any(".image." in path.name for path in Path(quarantine).rglob("*"))
            typer.echo(f"Files that could not stay in the library were moved to {quarantine}"
                       + ("; add the pictures again with `elite add`." if pictures else "."))
        for problem in report.problems:
            typer.echo(f"Problem: {problem}")
        if report.ok:
            typer.echo(f"Library OK ({report.concepts} concept{'' if report.concepts == 1 else 's'})")
        else:
            typer.echo("Run `elite check --repair` to fix what can be fixed." if not repair else "Some problems remain.", err=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def reencode(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Concepts to re-encode (default: all).", show_default=False)
    ] = None,
    crop: Annotated[
        Optional[str], typer.Option("--crop", metavar="auto|object", show_default=False,
                                    help="Crop mode to encode with (default: each concept's own).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Encode concepts again from their stored source images with the configured models.

    Needed after changing the mapper checkpoints (concepts encoded with other mappers are stale)
    and for concepts made by an elite before 0.2, which cropped square pictures. Each concept
    keeps its crop choice unless --crop is given.

    Example: elite reencode mycat
    """
    done = []

    def report(item) -> None:
        stored = item.concept
        summary = {**as_dict(stored), "seconds": round(item.seconds or 0.0, 3), "changed": item.changed}
        if item.merged_from:
            summary["merged_from"] = item.merged_from
        done.append(summary)
        if as_json:
            return
        if item.seconds is None:
            typer.echo(f"Up to date: <{stored.name}>")
        elif item.merged_from:
            typer.echo(f"Merged <{item.merged_from}> into <{stored.name}>: re-encoded, it is the same concept as "
                       f"<{stored.name}> (the same picture, encoded by the current mappers); write <{stored.name}> "
                       f"in prompts, or run `elite rename {stored.name} {item.merged_from}` to keep the old name "
                       f"({summary['seconds']:.2f}s)")
        else:
            verb = "Re-encoded" if item.changed else "Up to date:"
            typer.echo(f"{verb} <{stored.name}> ({summary['seconds']:.2f}s)")

    result = session_with_spinner().reencode(names, crop=crop, on_reencoded=report)
    if not result.done and not result.skipped:
        typer.echo("No concepts to re-encode.")
        return
    if as_json:
        echo_json(done)
    # Only without names (a named one fails before anything loads): the others are done, and an
    # imported concept, which has no picture to encode again, does not stop the command.
    for skipped in result.skipped:
        typer.echo(skipped_note(skipped.name), err=True)
