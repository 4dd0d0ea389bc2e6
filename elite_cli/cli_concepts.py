"""Commands over the concept library: add, list, show, rm, rename, tag, export, import, check,
reencode. Registered on `elite_cli.cli.app` when that module is imported."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from elite_cli.cli import (
    JsonFlag,
    app,
    as_dict,
    check_file_exists,
    echo_json,
    format_cell,
    library_dir,
    fetch_missing_models,
    load_models_with_status,
    model_spec,
    library_exists,
    open_store,
    print_rows,
    setting,
    short_time,
    stderr_console,
)
from elite_cli.errors import InputError, NameClash

EXPORT_FORMATS = ("elite", "diffusers", "a1111")


CropOption = Annotated[str, typer.Option(
    "--crop", metavar="auto|object",
    help="auto: a square picture whole (as the ELITE reference), others squared around the object; "
         "object: the square around the object on any picture.")]


@app.command()
def add(
    images: Annotated[list[Path], typer.Argument(help="Picture(s) of the thing, object centred.", show_default=False)],
    name: Annotated[
        Optional[str], typer.Option("--name", "-N", metavar="<name>", help="Concept name (default: the file name). One image only.")
    ] = None,
    mask: Annotated[
        Optional[str], typer.Option(
            "--mask", "-m", metavar="FILE|auto|none",
            help="Object mask file (white = object; one image only), auto (find the object: the default for a "
                 "picture without transparency) or none (the whole picture).")
    ] = None,
    object_text: Annotated[
        Optional[str], typer.Option("--object", metavar="<text>",
                                    help="What the automatic mask looks for, e.g. 'a cat' (default: the main object).")
    ] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", "-t", metavar="<tag>", help="Tag to attach; repeatable.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a concept of the same name.")] = False,
    crop: CropOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Encode pictures into concepts and store them in the library.

    Several images are added with one model load. Without a mask, the object is found
    automatically (a PNG with transparency uses its transparency); `elite add` prints where the
    preview of the object on the picture is.

    Example: elite add mycat.jpg --object "a black cat" --tag pets
    """
    from elite_cli.masks import MaskChooser, parse_mask_option

    mask_file = parse_mask_option(mask)
    mask_file = mask_file if isinstance(mask_file, Path) else None
    if len(images) > 1 and (name or mask_file):
        raise InputError("--name and --mask apply to one image; add images with their own name or mask one at a time.")
    for image in images:
        check_file_exists(image, "image")
    if mask_file is not None:
        check_file_exists(mask_file, "mask")
    from elite_cli.images import check_crop
    from elite_cli.library import name_from_stem, validate_name
    from elite_cli.library.names import validate_tag

    for value in tag or ():
        validate_tag(value)
    check_crop(crop)
    names = [validate_name(name)] if name else [name_from_stem(image.stem) for image in images]
    # Every picture (and the mask) is decoded, and its object found, before the models load and
    # before anything is stored, so that a bad file among several adds none of them.
    # Only the hashes are kept: holding every decoded picture of a large batch would cost memory.
    masks = MaskChooser(mask, object_text, setting("segmenter"), setting("device"), setting("dtype"))
    with stderr_console().status("Finding the object (the first run downloads the segmenter)...") \
            if masks.may_segment else contextlib.nullcontext():
        chosen = [masks.choose(image) for image in images]
    for choice in chosen:
        if choice.warning:
            typer.echo(f"Warning: {choice.warning}", err=True)
    source_hashes = [(choice.image_sha256, choice.mask_sha256) for choice in chosen]
    # The first run downloads the models; a failed download leaves no library behind.
    fetch_missing_models(model_spec())
    store = open_store()
    # Name problems surface before the models load and before anything is stored, so a call
    # with several images adds all of them or (for these errors) none.
    if not replace:
        for wanted, hashes in zip(names, source_hashes):
            if not store.exists(wanted):
                continue
            existing = store.get(wanted)
            # The same picture again under its default name is the concept already stored:
            # `store.add` recognises it (or names the fix when the mappers changed since).
            if (existing.image_sha256, existing.mask_sha256) != hashes:
                raise NameClash(f"a concept named '{existing.name}' already exists; pass --replace or choose --name.")
    repeated = sorted({wanted for wanted in names if names.count(wanted) > 1})
    if repeated:
        raise InputError(f"several images would be named '{repeated[0]}'; add them one at a time with --name.")
    from elite_cli.encoder import Encoder

    models, load_seconds = load_models_with_status()
    encoder = Encoder(models)
    added = []
    for image, wanted, choice in zip(images, names, chosen):
        started = time.perf_counter()
        concept = encoder.encode(image, mask=choice.path, crop=crop)
        concept.provenance.update(choice.provenance)  # an automatic mask is more than "a mask file"
        stored = store.add(
            concept, name=wanted, image_path=image, mask_path=choice.path, tags=tuple(tag or ()), replace=replace
        )
        preview = stored.preview_path if stored.preview_path.exists() else None
        summary = as_dict(stored)
        summary.update(seconds=round(time.perf_counter() - started, 3), mask_source=choice.source,
                       preview_path=str(preview) if preview else None)
        added.append(summary)
        if not as_json:
            if stored.duplicate:
                typer.echo(already_stored(stored, name, "added"))
            else:
                typer.echo(f"Added <{stored.name}> (id {stored.short_id}) in {summary['seconds']:.2f}s")
            if preview:
                typer.echo(f"  preview: {preview}")
    masks.close()
    if as_json:
        echo_json({"added": added, "model_load_seconds": round(load_seconds, 3)})


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
    concepts = open_store().list(tag=tag, pattern=pattern) if library_exists() else []
    stale = _stale_flags(concepts)
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
    mappers = _mapper_stale_flags(concepts)
    count = sum(1 for flag in mappers if flag)
    if count:
        typer.echo(f"{count} concept{'s were' if count > 1 else ' was'} encoded with other mappers than the configured "
                   "ones (stale); `elite gen` refuses them until you run `elite reencode`.", err=True)
    count = sum(1 for stored in concepts if not stored.preprocessing_is_current())
    if count:
        typer.echo(f"{count} concept{'s were' if count > 1 else ' was'} encoded by an older elite that cropped square "
                   "pictures (stale); `elite reencode` makes the reference's concept from the stored pictures.",
                   err=True)


def _stale_flags(concepts: list) -> list[bool | None]:
    """Per concept: whether `elite reencode` would change it: encoded by other mappers than the
    configured ones (which `elite gen` refuses) or with an older preprocessing of the picture;
    None when only the mappers could tell and the configured mapper files cannot be read."""
    return [True if not stored.preprocessing_is_current() else flag
            for stored, flag in zip(concepts, _mapper_stale_flags(concepts))]


def _mapper_stale_flags(concepts: list) -> list[bool | None]:
    """Per concept: encoded by other mappers than the configured ones (the test `elite gen`
    applies), or None for all when the configured mapper files cannot be read."""
    if not concepts:
        return []
    from elite_cli.fingerprints import configured_fingerprints

    from elite_cli.errors import EliteError

    try:
        current = configured_fingerprints(library_dir(), setting("global_mapper"), setting("local_mapper"))
    except EliteError:  # a bad config file: listing still works, staleness is unknown
        current = None
    if current is None:
        return [None] * len(concepts)
    return [not stored.mapper_matches(*current) for stored in concepts]


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Concept name or id.", show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Show one concept: id, tags, source files, thumbnail and the models that encoded it.

    Example: elite show mycat
    """
    store = open_store(create=False)
    record = store.get(name)
    details = as_dict(record)
    from elite_cli.masks import describe_mask_source

    origin = store.mask_origin(record)
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
    store = open_store(create=False)
    records = [store.get(name) for name in names]  # every name must exist before anything is removed
    for record in records:
        kept = store.remove(record.id, keep_sources=keep_sources)
        typer.echo(f"Removed <{record.name}>" + (f"; sources kept in {kept[0].parent}" if kept else ""))


@app.command()
def rename(
    old: Annotated[str, typer.Argument(help="Current name or id.", show_default=False)],
    new: Annotated[str, typer.Argument(help="New name.", show_default=False)],
) -> None:
    """Rename a concept; prompts then use the new <name>.

    Example: elite rename mycat tom
    """
    store = open_store(create=False)
    before = store.get(old)
    renamed = store.rename(before.id, new)
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
    store = open_store(create=False)
    had = {value.lower() for value in store.get(name).tags}
    record = store.untag(name, *tags) if remove_tags else store.tag(name, *tags)
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
    if format not in EXPORT_FORMATS:
        raise InputError(f"--format '{format}' is not one of {', '.join(EXPORT_FORMATS)}.")
    result = open_store(create=False).export(name, output, format, token=token, overwrite=overwrite)
    typer.echo(f"Exported <{name}> to {result.path} ({result.format})")
    if result.note:
        typer.echo(f"Note: {result.note}.", err=True)


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
    check_file_exists(file, "concept file")
    from elite_cli.library.sharing import read_bundle

    read_bundle(file, name)  # a refused file fails before the library is opened (or created)
    try:
        stored = open_store().import_concept(file, name=name, replace=replace)
    except NameClash as clash:
        if clash.taken is None:
            raise
        raise NameClash(f"a concept named '{clash.taken}' already exists; pass --name to import it under another "
                        "name, or --replace to replace that one.", taken=clash.taken) from None
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
    from elite_cli.errors import IndexUnreadable

    repaired = None
    try:
        store = open_store(create=False)
        if repair and _index_is_corrupt(store):
            store.close()
            store = None
    except IndexUnreadable:
        if not repair:
            raise
        store = None
    if store is None:
        from elite_cli.store import ConceptStore

        # The concept files describe themselves, so a new index can be built from them alone.
        store, repaired = ConceptStore.rebuild_index(library_dir())
    elif repair:
        repaired = store.repair()
    actions = repaired.actions if repaired else []
    quarantine = repaired.quarantine if repaired else None
    # A repair ends with a full check (every file's hash read): not a second one here.
    report = repaired.after if repaired else store.check()
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


def _index_is_corrupt(store) -> bool:
    """Whether library.db is damaged beyond an in-place repair (SQLite's quick_check fails)."""
    import sqlite3

    try:
        return any(problem.kind == "index-corrupt" for problem in store.check(verify_hashes=False).problems)
    except sqlite3.DatabaseError:
        return True


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
    if crop is not None:
        from elite_cli.images import check_crop

        check_crop(crop)
    store = open_store(create=False)
    # Resolve every name first: a typo fails before the models load.
    records = [store.get(name) for name in names] if names else store.list()
    if not records:
        typer.echo("No concepts to re-encode.")
        return
    if names:  # a named concept that cannot be re-encoded fails before the models load, too
        store.require_sources(records)
    image_encoder = setting("image_encoder")
    if all(flag is False for flag in _stale_flags(records)) and all(r.image_encoder == image_encoder for r in records) \
            and all(crop in (None, r.crop) for r in records):
        # Every concept was made by the configured models (known without torch): nothing to load.
        done = [{**as_dict(record), "seconds": 0.0, "changed": False} for record in records]
        if as_json:
            echo_json(done)
        else:
            for record in records:
                typer.echo(f"Up to date: <{record.name}>")
        return
    from elite_cli.encoder import Encoder

    models, _ = load_models_with_status()
    encoder = Encoder(models)
    done, skipped = [], []
    for record in records:
        started = time.perf_counter()
        if record.mapper_matches(models.global_fingerprint, models.local_fingerprint) \
                and record.image_encoder == image_encoder and record.preprocessing_is_current() \
                and crop in (None, record.crop):
            stored, changed = record, False  # made by these models already: nothing to encode
        elif store.without_sources([record]):
            skipped.append(record)  # only without names (named ones were checked above)
            continue
        else:
            stored = store.reencode(record.id, encoder, crop=crop)
            # Equal tensors with an updated record (e.g. a non-square picture, which crops as
            # before) still bring the concept up to date: it is not stale any more.
            changed = not stored.duplicate or (stored.preprocessing, stored.crop) != (record.preprocessing, record.crop)
        # Its new encoding was another concept's: the two merged under the other's name.
        merged = stored.name.lower() != record.name.lower()
        summary = as_dict(stored)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["changed"] = changed or merged
        if merged:
            summary["merged_from"] = record.name
        done.append(summary)
        if as_json:
            continue
        if merged:
            typer.echo(f"Merged <{record.name}> into <{stored.name}>: re-encoded, it is the same concept as "
                       f"<{stored.name}> (the same picture, encoded by the current mappers); write <{stored.name}> "
                       f"in prompts, or run `elite rename {stored.name} {record.name}` to keep the old name "
                       f"({summary['seconds']:.2f}s)")
        else:
            verb = "Re-encoded" if summary["changed"] else "Up to date:"
            typer.echo(f"{verb} <{stored.name}> ({summary['seconds']:.2f}s)")
    if as_json:
        echo_json(done)
    # The others are done; a stale concept without a source picture still needs the user.
    store.require_sources(skipped)
