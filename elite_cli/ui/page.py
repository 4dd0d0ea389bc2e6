"""The Gradio page of `elite ui`: three tabs (Generate, Library, History) wired to actions.py.

Handlers only translate between components and `Actions`; what a control does lives there.
Element ids (elem_id) are part of the page's contract: the browser tests find controls by them.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' `gr.SelectData`
# annotations at run time to know which ones want the event.
import hashlib
import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elite_cli.errors import InputError
from elite_cli.model.generation_limits import LAMBDA_RANGE, MAX_IMAGE_SIDE, SCHEDULERS
from elite_cli.ui.actions import (HISTORY_COLUMNS, MASK_AUTO, MASK_FILE, MASK_NONE, MASK_PAINT, Actions, HistoryRow,
                                  automatic_mask_available, describe, error_message, form_settings, insert_placeholder)
from elite_cli.ui.modes import build_mode_panel

if TYPE_CHECKING:
    import gradio as gr

MASK_CHOICES = [("Paint it", MASK_PAINT), ("Mask file", MASK_FILE), ("Whole picture", MASK_NONE)]
MAX_IMAGES_PER_CLICK = 8
# Progress reaches the page twice a second, drawn as one bar over the images. On a machine whose
# browser shares the CPU with the denoising, each redraw is time taken from the generation: ten
# messages a second, with Gradio's full overlay on both outputs, doubled the browser's CPU time per
# generation (benchmarks/README.md, section 9).
PROGRESS_INTERVAL_S = 0.5
STATE_TTL_S = 3 * 3600
GALLERY_SIDE = 512  # px: sharp in the library's cells (one concept alone fills ~600 px), also on a dense screen
GENERATE_LABEL, GENERATING_LABEL = "Generate", "Generating..."
CSS = """
#add-message p, #library-message p, #run-info p, #history-message p { margin: 0.25em 0; }
.elite-error { color: var(--error-text-color); }
/* The bar's label names the step; Gradio's corner text adds a timer that redraws ten times a second. */
#results .meta-text { display: none; }
/* While the bar is shown over an empty gallery, the gallery's placeholder icon would sit under its text. */
#results:has([data-testid=status-tracker]:not(.hide)) .empty { visibility: hidden; }
/* A range input keeps a wide minimum size: in a narrow column it pushed the maximum ("150", "2048")
   out of the slider's box, which clipped it. */
.slider_input_container input[type=range] { min-width: 0; }
/* Narrow columns broke the history's headers mid-word ("ste ps"). */
#history .header { word-break: keep-all; overflow-wrap: normal; white-space: nowrap; }
"""


def message_html(outcome_text: str) -> str:
    """Markdown for a one-line outcome; errors stand out."""
    if outcome_text.startswith("Error:"):
        return f'<p class="elite-error">{_escape(outcome_text)}</p>'
    return _escape(outcome_text)


def _escape(text: str) -> str:
    # Concept names appear as <name>: shown as text, not read as HTML tags.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Files:
    """Hands files to the page. Gradio serves files from the working folder, the temp folder and the
    allowed folders only; a file elsewhere (an image `elite gen -o` wrote somewhere else) is shown
    from a copy in a folder of this server's own, removed when it stops."""

    def __init__(self, allowed: list[Path]):
        self.allowed = [Path(folder).resolve() for folder in allowed] + [Path.cwd().resolve(),
                                                                          Path(tempfile.gettempdir()).resolve()]
        self.staging = Path(tempfile.mkdtemp(prefix="elite-ui-"))

    def servable(self, path: Path | str) -> str:
        path = Path(path).resolve()
        if any(path.is_relative_to(folder) for folder in self.allowed):
            return str(path)
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        copy = self.staging / digest / path.name
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        return str(copy)

    def gallery_picture(self, picture: Path | None, thumbnail: Path) -> str:
        """The concept as a gallery shows it: its stored picture at GALLERY_SIDE px (the library's
        128 px thumbnail looked blurred in a larger cell), made once per picture; the thumbnail
        when there is no picture (an imported concept); a grey square when neither can be read."""
        from PIL import Image, ImageOps

        from elite_cli.model.images import to_rgb

        source = picture if picture is not None and picture.is_file() else thumbnail
        try:
            stamp = source.stat()
            key = hashlib.sha256(f"{source.resolve()}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()[:16]
            shown = self.staging / "gallery" / f"{key}.png"
            if not shown.exists():
                with Image.open(source) as opened:
                    small = to_rgb(ImageOps.exif_transpose(opened))
                small.thumbnail((GALLERY_SIDE, GALLERY_SIDE), Image.LANCZOS)
                shown.parent.mkdir(parents=True, exist_ok=True)
                small.save(shown)
        except OSError:  # a missing thumbnail (`elite check` reports it)
            shown = self.staging / "gallery" / "missing.png"
            if not shown.exists():
                shown.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (GALLERY_SIDE, GALLERY_SIDE), (128, 128, 128)).save(shown)
        return str(shown)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def build_page(actions: Actions, files: Files) -> "gr.Blocks":
    import gradio as gr

    mask_choices = MASK_CHOICES + ([("Find it automatically", MASK_AUTO)] if automatic_mask_available() else [])

    # --- what the handlers return -----------------------------------------------------------------

    def concept_views(selected: str | None = None) -> tuple[Any, Any, list[str]]:
        """Both galleries (picture, caption) and the names in their order; the library gallery
        highlights `selected` by name (its place changes when a rename re-sorts the gallery)."""
        cards = actions.concept_cards()
        items = [(files.gallery_picture(card.picture, card.thumbnail), card.caption) for card in cards]
        names = [card.name for card in cards]
        highlighted = names.index(selected) if selected in names else None
        return items, gr.Gallery(value=items, selected_index=highlighted), names

    def history_view() -> tuple[Any, list[HistoryRow]]:
        rows = actions.history()
        return gr.Dataframe(value=[row.cells for row in rows] or None, headers=HISTORY_COLUMNS), rows

    # --- the page -----------------------------------------------------------------------------------

    with gr.Blocks(title="elite", analytics_enabled=False) as page:
        gr.Markdown("## elite: put the thing in your picture into new images\n"
                    "Add a concept from a picture in **Library**, then write `<name>` in a prompt under **Generate**.")
        # Per-tab state expires (a tab left open longer clicks a row again); server.SESSIONS_KEPT caps the tabs kept.
        concept_names = gr.State([], time_to_live=STATE_TTL_S)
        history_rows = gr.State([], time_to_live=STATE_TTL_S)
        selected_row = gr.State(None, time_to_live=STATE_TTL_S)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", placeholder="<mycat> on the beach", lines=2, elem_id="prompt")
                        negative_prompt = gr.Textbox(label="Negative prompt", placeholder="blurry, low quality",
                                                     elem_id="negative-prompt")
                        with gr.Row():
                            count = gr.Slider(1, MAX_IMAGES_PER_CLICK, value=1, step=1, label="Images", elem_id="count")
                            seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", minimum=-1, elem_id="seed")
                        with gr.Row():
                            llambda = gr.Slider(LAMBDA_RANGE[0], LAMBDA_RANGE[1], value=0.8, step=0.05,
                                                label="Lambda (detail from the picture)", elem_id="lambda")
                            guidance = gr.Slider(0, 15, value=5.0, step=0.5, label="Guidance", elem_id="guidance")
                            steps = gr.Slider(1, 150, value=50, step=1, label="Steps", elem_id="steps")
                        with gr.Accordion("Scheduler and size", open=False):
                            with gr.Row():
                                scheduler = gr.Dropdown(list(SCHEDULERS), value="lms", label="Scheduler",
                                                        elem_id="scheduler")
                                width = gr.Slider(64, MAX_IMAGE_SIDE, value=512, step=8, label="Width", elem_id="width")
                                height = gr.Slider(64, MAX_IMAGE_SIDE, value=512, step=8, label="Height",
                                                   elem_id="height")
                        mode_panel = build_mode_panel(gr)
                        generate_button = gr.Button(GENERATE_LABEL, variant="primary", elem_id="generate")
                        picker = gr.Gallery(label="Your concepts: click one to put it in the prompt", columns=6,
                                            height=220, allow_preview=False, elem_id="picker")
                    with gr.Column(scale=4):
                        # "contain": a single image is shown whole, not cropped to the wide box; no "share" button
                        # (it only works on Hugging Face Spaces).
                        results = gr.Gallery(label="Images", columns=2, height=560, format="png", object_fit="contain",
                                             buttons=["download", "fullscreen"], elem_id="results")
                        run_info = gr.Markdown(elem_id="run-info")
            with gr.Tab("Library", id="library"):
                with gr.Row():
                    with gr.Column(scale=2):
                        gr.Markdown("### Add a concept")
                        picture = gr.File(label="Picture of the object (PNG, JPEG, WebP)", type="filepath",
                                          file_types=["image"], elem_id="picture")
                        mask_mode = gr.Radio(mask_choices, value=MASK_PAINT, label="Mark the object",
                                             elem_id="mask-mode")
                        editor = gr.ImageEditor(label="Paint over the object", type="numpy", sources=(), layers=False,
                                                transforms=(), visible=False, height=420, elem_id="mask-editor",
                                                brush=gr.Brush(colors=["#ff2d6f"], color_mode="fixed"))
                        mask_file = gr.File(label="Mask (same size; white = object)", type="filepath",
                                            file_types=["image"], visible=False, elem_id="mask-file")
                        # `elite add --object`, and the preview `elite add` writes, before anything is added.
                        mask_object = gr.Textbox(label="Object to find (e.g. 'a red mug'; empty: the main object)",
                                                 visible=False, elem_id="mask-object")
                        mask_preview = gr.Image(label="Automatic mask: the object bright, the encoder's square in "
                                                "yellow", type="pil", interactive=False, visible=False, height=320,
                                                buttons=["fullscreen"], elem_id="mask-preview")
                        with gr.Row():
                            new_concept_name = gr.Textbox(label="Name (empty: from the file name)",
                                                          elem_id="concept-name")
                            new_concept_tags = gr.Textbox(label="Tags (comma or space separated)",
                                                          elem_id="concept-tags")
                        add_button = gr.Button("Add to the library", variant="primary", elem_id="add")
                        add_message = gr.Markdown(elem_id="add-message")
                    with gr.Column(scale=3):
                        library = gr.Gallery(label="Library", columns=4, height=360, allow_preview=False,
                                             elem_id="library")
                        selected_name = gr.Textbox(label="Selected concept", interactive=False,
                                                   elem_id="selected-concept")
                        with gr.Row():
                            concept_picture = gr.Image(label="Picture and mask", type="filepath", interactive=False,
                                                       height=260, buttons=["fullscreen"], elem_id="concept-picture")
                            with gr.Column():
                                concept_details = gr.Markdown(elem_id="concept-details")
                                export_button = gr.DownloadButton("Export (.elite.safetensors)",
                                                                  elem_id="export-concept")
                        with gr.Row():
                            rename_to = gr.Textbox(label="New name", elem_id="rename-to")
                            rename_button = gr.Button("Rename", elem_id="rename")
                        with gr.Row():
                            tags_edit = gr.Textbox(label="Tags", elem_id="tags-edit")
                            tags_button = gr.Button("Set tags", elem_id="set-tags")
                        with gr.Row():
                            use_button = gr.Button("Use in prompt", elem_id="use-concept")
                            remove_button = gr.Button("Remove", variant="stop", elem_id="remove")
                        library_message = gr.Markdown(elem_id="library-message")
            with gr.Tab("History", id="history"):
                refresh_button = gr.Button("Refresh", size="sm", elem_id="refresh-history")
                history_table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, wrap=True, elem_id="history")
                with gr.Row():
                    history_image = gr.Image(label="Image", type="filepath", interactive=False, height=380,
                                             buttons=["download", "fullscreen"], elem_id="history-image")
                    with gr.Column():
                        history_details = gr.Markdown(elem_id="history-details")
                        with gr.Row():
                            again_button = gr.Button("Make it again", elem_id="make-again")
                            reuse_button = gr.Button("Edit these settings", elem_id="reuse-settings")
                            download_button = gr.DownloadButton("Download PNG", elem_id="download")
                        history_message = gr.Markdown(elem_id="history-message")

        # --- loading and refreshing -------------------------------------------------------------------

        page.load(concept_views, None, [picker, library, concept_names]).then(
            history_view, None, [history_table, history_rows])
        refresh_button.click(history_view, None, [history_table, history_rows])

        # --- generating -----------------------------------------------------------------------------

        def generate(prompt_text, negative_text, images, seed_value, lambda_value, guidance_value, steps_value,
                     scheduler_name, width_value, height_value, *source, progress=gr.Progress()):
            try:
                settings = form_settings(images=images, seed=seed_value, lambda_=lambda_value, guidance=guidance_value,
                                         steps=steps_value, width=width_value, height=height_value)
                source = mode_panel.preprocess(source)
            except InputError as error:
                yield [], message_html(error_message(error))
                return
            updates = actions.generate(str(prompt_text or ""), negative_prompt=str(negative_text or ""),
                                       scheduler=str(scheduler_name), source=source, **settings)
            yield from follow(updates, progress, settings["n"])

        def follow(updates, progress, images_wanted):
            shown, warnings = [], []
            last_reported = 0.0
            yield [], ""
            for update in updates:
                if update.step is not None:
                    # The bar is redrawn at most every PROGRESS_INTERVAL_S: more messages only take
                    # time from the generation (the steps of a small image come faster than that).
                    step, total = update.step
                    if step == total or time.monotonic() - last_reported >= PROGRESS_INTERVAL_S:
                        last_reported = time.monotonic()
                        progress(update.step, desc=f"Image {min(len(shown) + 1, images_wanted)} of {images_wanted}: "
                                                   f"denoising, step {step} of {total}", unit="steps")
                elif update.image is not None:
                    shown.append((files.servable(update.image.path), f"seed {update.image.seed}"))
                    yield shown, ""
                    if len(shown) < images_wanted:
                        # Gradio drops the bar when an image arrives; without this the page looks
                        # finished until the next image's first step is reported.
                        progress((len(shown), images_wanted), desc=f"Image {len(shown) + 1} of {images_wanted}: "
                                                                   "starting", unit="images")
                elif update.warning is not None:
                    warnings.append(update.warning)
                    gr.Warning(update.warning)
                elif update.error is not None:
                    yield shown, message_html(update.error)
                elif update.result is not None:
                    result = update.result
                    made = len(result.images)
                    seeds = ", ".join(str(image.seed) for image in result.images)
                    text = (f"Made {made} image{'s' * (made != 1)} (seed{'s' * (made != 1)} {seeds}) "
                            f"in {result.seconds:.1f} s, run {result.run_id[:12]}; saved in "
                            f"{result.paths[0].parent if result.paths else 'nothing'}.")
                    if warnings:
                        text += " Warning: " + " ".join(warnings)
                    yield shown, message_html(text)

        generation_inputs = [prompt, negative_prompt, count, seed, llambda, guidance, steps, scheduler, width, height,
                             *mode_panel.inputs]
        # One progress bar, over the images, labelled with the step (the CSS above hides Gradio's timer).
        progress_display = dict(show_progress="minimal", show_progress_on=results)
        generation_buttons = [generate_button, again_button]

        def busy():
            # Until the whole run ends: the first images arrive long before the last one.
            return gr.Button(GENERATING_LABEL, interactive=False), gr.Button(interactive=False)

        def idle():
            return gr.Button(GENERATE_LABEL, interactive=True), gr.Button(interactive=True)

        quick = dict(queue=False, show_progress="hidden", api_visibility="private")
        for trigger, visibility in ((generate_button.click, "public"), (prompt.submit, "private")):
            # preprocess=False: the values reach form_settings as sent. Gradio's own preprocessing
            # failed on NaN, Infinity or null from an API client with a traceback in the server's log.
            trigger(busy, None, generation_buttons, **quick).then(
                generate, generation_inputs, [results, run_info], api_name="generate", api_visibility=visibility,
                preprocess=False, **progress_display).then(
                idle, None, generation_buttons, **quick).then(history_view, None, [history_table, history_rows])

        def pick(prompt_text, names, event: gr.SelectData):
            return insert_placeholder(prompt_text, names[event.index]) if event.index < len(names) else prompt_text

        picker.select(pick, [prompt, concept_names], prompt)

        # --- the library ----------------------------------------------------------------------------

        def mask_controls(mode, picture_path):
            editor_update = gr.ImageEditor(visible=mode == MASK_PAINT and bool(picture_path))
            return editor_update, gr.File(visible=mode == MASK_FILE), gr.Textbox(visible=mode == MASK_AUTO)

        def automatic_preview(picture_path, mode, object_text):
            if mode != MASK_AUTO or not picture_path:
                return gr.Image(value=None, visible=False), gr.update()
            drawn, outcome = actions.preview_automatic_mask(picture_path, object_text,
                                                            {picture_path: Path(picture_path).name})
            if drawn is None:
                return gr.Image(value=None, visible=False), message_html(outcome.message)
            from PIL import Image

            return gr.Image(value=Image.open(io.BytesIO(drawn)), visible=True), message_html(outcome.message)

        def picture_uploaded(picture_path, mode):
            if not picture_path:
                # Cleared (also by a successful add): the add's message must stay on the page.
                return gr.ImageEditor(value=None, visible=False), gr.update()
            checked = actions.check_picture(picture_path)
            if not checked.ok:
                return gr.ImageEditor(value=None, visible=False), message_html(checked.message)
            background = {"background": picture_path, "layers": [], "composite": None}
            return gr.ImageEditor(value=background, visible=mode == MASK_PAINT), ""

        preview_inputs, preview_outputs = [picture, mask_mode, mask_object], [mask_preview, add_message]
        mask_mode.change(mask_controls, [mask_mode, picture], [editor, mask_file, mask_object]).then(
            automatic_preview, preview_inputs, preview_outputs)
        picture.change(picture_uploaded, [picture, mask_mode], [editor, add_message]).then(
            automatic_preview, preview_inputs, preview_outputs)
        mask_object.submit(automatic_preview, preview_inputs, preview_outputs)
        mask_object.blur(automatic_preview, preview_inputs, preview_outputs)

        def add(picture_path, mode, mask_path, painted, name, tags, object_text, selected):
            uploads = {path: Path(path).name for path in (picture_path, mask_path) if path}
            outcome = actions.add_concept(picture_path, mode, mask_path, (painted or {}).get("layers"), name, tags,
                                          uploads, object_text)
            if not outcome.ok:
                return (message_html(outcome.message), gr.File(), gr.File(), gr.Textbox(), gr.Textbox(),
                        *concept_views(selected))
            return (message_html(outcome.message), None, None, "", "", *concept_views(selected))

        add_button.click(add, [picture, mask_mode, mask_file, editor, new_concept_name, new_concept_tags, mask_object,
                               selected_name],
                         [add_message, picture, mask_file, new_concept_name, new_concept_tags, picker, library,
                          concept_names])

        def select_concept(names, event: gr.SelectData):
            name = names[event.index] if event.index < len(names) else ""
            cards = {card.name: card for card in actions.concept_cards()}
            tags = ", ".join(cards[name].tags) if name in cards else ""
            return name, name, tags, ""

        library.select(select_concept, concept_names, [selected_name, rename_to, tags_edit, library_message])

        def rename(old, new):
            outcome, name = actions.rename(old, new)
            return (message_html(outcome.message), name or "", *concept_views(name))

        rename_button.click(rename, [selected_name, rename_to],
                            [library_message, selected_name, picker, library, concept_names])

        def set_tags(name, tags):
            return (message_html(actions.set_tags(name, tags).message), *concept_views(name))

        def show_details(name):
            if not name:
                return None, "", gr.DownloadButton(value=None)
            try:
                details = actions.concept_details(name)
            except Exception as error:  # removed meanwhile (by `elite rm` in a terminal)
                return None, message_html(error_message(error)), gr.DownloadButton(value=None)
            exported, _ = actions.export_concept(details.name, files.staging / "exports")
            picture_shown = files.servable(details.picture) if details.picture else None
            return picture_shown, details.markdown, gr.DownloadButton(value=str(exported) if exported else None)

        details_outputs = [concept_picture, concept_details, export_button]
        selected_name.change(show_details, selected_name, details_outputs)
        tags_button.click(set_tags, [selected_name, tags_edit], [library_message, picker, library, concept_names]).then(
            show_details, selected_name, details_outputs)

        def remove(name):
            if not name:  # the confirmation was declined
                return (gr.update(),) * 5  # nothing changed: the selection and its highlight stay
            outcome = actions.remove(name)
            return (message_html(outcome.message), "" if outcome.ok else name,
                    *concept_views(None if outcome.ok else name))

        remove_button.click(remove, selected_name, [library_message, selected_name, picker, library, concept_names],
                            js="(name) => (name && confirm(`Remove <${name}> from the library?`)) ? name : ''")

        def use(prompt_text, name):
            if not name:
                return prompt_text, gr.Tabs()
            return insert_placeholder(prompt_text, name), gr.Tabs(selected="generate")

        use_button.click(use, [prompt, selected_name], [prompt, tabs])

        # --- history --------------------------------------------------------------------------------

        def select_row(rows, event: gr.SelectData):
            row_number = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            if row_number is None or row_number >= len(rows):
                return None, None, "", gr.DownloadButton(value=None), ""
            row = rows[row_number]
            path = row.path if row.path and row.path.is_file() else None
            shown = files.servable(path) if path else None
            note = "" if path else message_html("Error: this image's PNG is no longer there; 'Make it again' makes it anew.")
            return row, shown, describe(row.entry), gr.DownloadButton(value=shown), note

        history_table.select(select_row, history_rows,
                             [selected_row, history_image, history_details, download_button, history_message])

        def make_again(row, progress=gr.Progress()):
            if row is None:
                yield gr.Tabs(), [], message_html("Error: no image is selected; click a row of the history first.")
                return
            for shown, info in follow(actions.make_again(row.entry), progress, 1):
                yield gr.Tabs(selected="generate"), shown, info

        again_button.click(busy, None, generation_buttons, **quick).then(
            make_again, selected_row, [tabs, results, run_info], **progress_display).then(
            idle, None, generation_buttons, **quick).then(
            history_view, None, [history_table, history_rows])

        def nothing_to_download(row):
            # With no row selected the button has no file, and a click would do nothing at all.
            if row is None:
                return message_html("Error: no image is selected; click a row of the history first.")
            return gr.update()

        download_button.click(nothing_to_download, selected_row, history_message, **quick)

        def reuse(row):
            unchanged = [gr.update()] * (len(generation_inputs) + 2)  # the form, the panel's accordion, run_info
            if row is None:
                return [*unchanged, gr.update(), gr.Tabs()]
            try:
                reused = actions.reuse_settings(row.entry)
            except Exception as error:  # a row elite cannot read back: said under it, the form left as it is
                return [*unchanged, message_html(error_message(error)), gr.Tabs()]
            job, panel = reused.job, reused.panel
            picture_shown = files.servable(panel.picture) if panel.picture else None
            return (job.prompt, job.negative_prompt, 1, job.seed, job.llambda, job.guidance_scale, job.steps,
                    job.scheduler, job.width, job.height, *mode_panel.show(gr, panel, picture_shown),
                    message_html(reused.message), "", gr.Tabs(selected="generate"))

        reuse_button.click(reuse, selected_row,
                           [*generation_inputs, mode_panel.accordion, run_info, history_message, tabs])
    return page


def theme() -> "gr.themes.Base":
    """Gradio's default look with the system's fonts: nothing is fetched from font servers."""
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


__all__ = ["build_page", "theme", "Files", "CSS", "error_message"]
