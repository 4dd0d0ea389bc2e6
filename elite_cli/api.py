"""elite's Python API: what the `elite` commands, the web UI and a notebook all call.

    from elite_cli.api import Session

    session = Session()                       # the library in $ELITE_HOME, settings as `elite config` shows
    session.add_concept("mycat.jpg", name="mycat", tags=["pets"])
    result = session.generate("<mycat> on the beach", n=4, seed=7)
    result.paths                              # the PNGs written, each with its history row

A `Session` holds one library and the models, loaded on first need and then kept: ten
`generate` calls load them once. Threads may share a session (each gets its own connection to
the library; generating and encoding take turns on the models). Methods never print; they raise the typed errors of
`elite_cli.errors` (one sentence each, as the CLI prints them after `Error: `). Importing this
module is cheap (torch loads with the models).

Public signatures (stable: new keyword options may be added, none removed):

    Session(library=None, *, base_model=None, image_encoder=None, global_mapper=None,
            local_mapper=None, device=None, dtype=None, output_dir=None, low_vram=False,
            compile=False, model_loader=None, downloader=None, activity=None)
    session.library -> Path;  session.settings -> {key: Resolved};  session.setting(key) -> str
    session.spec -> ModelSpec;  session.models -> Models (loaded once);  session.model_load_seconds
    session.store -> ConceptStore (creates the library);  session.close() / `with Session() as s:`

    session.fetch_missing_models(spec=None, *, encoding=True, segmenter=None)  # hub downloads
    session.add_concept(image, mask=None, *, name=None, tags=(), replace=False, crop="auto",
                        object_text=None) -> StoredConcept
    session.add_concepts(images, *, masks=None, names=None, tags=(), replace=False, crop="auto",
                         object_text=None, on_added=None, on_mask=None, on_warning=None)
        -> list[StoredConcept]      # on_added(stored, seconds); on_mask(ChosenMask); on_warning(text)
        image: a file path, a PIL image or an HxW(x3|4) uint8 array; mask: a file path, a PIL
        image, an HxW array (bool, 0-255, or 0-1 floats; painted white = object), "auto" (found
        by the segmenter), "none" (the whole picture) or None (the picture's transparency, else
        automatic). crop: "auto" or "object"; object_text: what the automatic mask looks for.
    session.generate(prompt=None, *, jobs=None, n=1, seed=None, steps=50, guidance=5.0,
                     lambda_=0.8, negative_prompt="", width=512, height=512, scheduler="lms",
                     output_dir=None, batch_size=None, resume=False, allow_stale=False,
                     progress=None, on_image=None, on_warning=None, listener=None,
                     init_image=None, strength=None, inpaint=None, region=None, region_object=None,
                     inpaint_model=None, control=(), control_scale=1.0, control_image_is_map=False)
        -> GenerationResult                  # prompt: one prompt or a list (each from `seed`)
        init_image/strength: img2img; inpaint/region ("auto": region_object)/inpaint_model:
        inpainting; control ["canny=FILE", "depth=FILE"]: ControlNet (docs/modes.md).
    session.repeat(run_or_png, *, output_dir=None, batch_size=None, resume=False,
                   allow_stale=False, progress=None, on_image=None, on_warning=None,
                   listener=None) -> GenerationResult
    session.concepts(tag=None, pattern=None) -> list[StoredConcept]
    session.stale_flags(concepts) -> list[bool | None]     # reencode would change it
    session.mapper_stale_flags(concepts) -> list[bool | None]  # generate refuses it
    session.concept(name_or_id) -> StoredConcept
    session.mask_origin(name_or_concept) -> {mask_source, mask_model, mask_object}
    session.rename(name_or_id, new_name) -> StoredConcept
    session.tag(name_or_id, *tags) -> StoredConcept;  session.untag(name_or_id, *tags) -> StoredConcept
    session.remove(names, *, keep_sources=False) -> list[Removed]
    session.history(limit=50) -> list[RunSummary]                        # limit None: every run
    session.export(name_or_id, path, format="elite", *, token=None, overwrite=False) -> ExportResult
    session.import_concept(path, *, name=None, replace=False) -> StoredConcept
    session.check(repair=False) -> LibraryCheck
    session.reencode(names=None, *, crop=None, on_reencoded=None) -> ReencodeResult   # .done, .skipped

`GenerationResult` (run_id, images: [GeneratedImage(path, prompt, seed, index, parameters, ...)],
skipped, seconds, paths, seeds) and `GenerationListener` come from elite_cli/generation/run.py.
"""

from __future__ import annotations

import dataclasses
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from elite_cli.common import config as settings_module
from elite_cli.errors import InputError, LibraryError, NameClash
from elite_cli.generation.jobs import GenerationJob
from elite_cli.generation.run import (CallbackListener, GeneratedImage, GenerationListener, GenerationResult,
                               GenerationWarning, check_run_options)

if TYPE_CHECKING:
    from elite_cli.library import CheckReport, ConceptStore, ExportResult, HistoryEntry, StoredConcept
    from elite_cli.model.masks import ChosenMask
    from elite_cli.model.loading import Models, ModelSpec

__all__ = ["Session", "GenerationJob", "GenerationResult", "GeneratedImage", "GenerationListener", "GenerationWarning",
           "RunSummary", "Removed", "LibraryCheck", "Reencoded", "ReencodeResult", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("elite", "diffusers", "a1111")
MODEL_SETTINGS = ("base_model", "image_encoder", "global_mapper", "local_mapper", "device", "dtype")


@dataclass
class RunSummary:
    """One `generate` call as the history keeps it."""

    run_id: str
    created: str
    prompts: list[str]  # each prompt once, in the call's order
    seed: int  # the first seed of the run
    images: list["HistoryEntry"]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "created": self.created, "prompts": self.prompts, "seed": self.seed,
                "images": [image.to_dict() if hasattr(image, "to_dict") else dataclasses.asdict(image)
                           for image in self.images]}


@dataclass
class Removed:
    concept: "StoredConcept"
    kept_sources: list[Path] = field(default_factory=list)  # with keep_sources: where the pictures stay


@dataclass
class LibraryCheck:
    """A check of the library (after a repair when asked): `report.ok`, `report.problems`."""

    report: "CheckReport"
    repaired: list[str] = field(default_factory=list)  # what the repair did, one sentence each
    quarantine: Path | None = None  # where files that could not stay went


@dataclass
class Reencoded:
    concept: "StoredConcept"
    changed: bool  # False: the configured models had made it already
    seconds: float | None  # None: known to be up to date without loading the models
    # The name it had when its new encoding turned out to be another concept's: the two merged
    # under that other concept's name (`concept.name`), which prompts must use now.
    merged_from: str | None = None


@dataclass
class ReencodeResult:
    store: "ConceptStore" = field(repr=False)
    done: list[Reencoded] = field(default_factory=list)
    skipped: list["StoredConcept"] = field(default_factory=list)  # stale, but their source pictures are gone

    def require_sources(self) -> None:
        """Raise LibraryError naming the skipped concepts (their pictures must be added again)."""
        self.store.require_sources(self.skipped)


def check_local_mappers(spec: "ModelSpec") -> None:
    """A missing or wrong mapper file (a local path, not an hf:// one) fails now, from the files'
    heads, not after seconds of importing and loading the other models."""
    from elite_cli.model.hub import is_hub_file
    from elite_cli.model.mapper_files import require_mapper_file

    for value, role in ((spec.global_mapper, "global"), (spec.local_mapper, "local")):
        if value and not is_hub_file(value):
            require_mapper_file(Path(value), f"{role} mapper", role)


class Session:
    """One library and its models (see the module docstring for every method).

    Settings come, like the CLI's, from the keyword arguments here, then the ELITE_* environment,
    then the library's config.toml, then the defaults. `model_loader(spec) -> Models` replaces
    `elite_cli.model.loading.load_models` (the CLI wraps it in a spinner). Models missing from the
    Hugging Face cache are downloaded before they are needed by `downloader(plans, main_process)`
    (default: `elite_cli.model.hub.fetch`, quietly; the CLI shows progress). `activity(text)` returns a
    context manager around slow steps that have no progress of their own (finding objects; the
    CLI shows a spinner).
    """

    def __init__(self, library: str | Path | None = None, *, base_model: str | None = None,
                 image_encoder: str | None = None, global_mapper: str | None = None, local_mapper: str | None = None,
                 device: str | None = None, dtype: str | None = None, output_dir: str | Path | None = None,
                 low_vram: bool = False, compile: bool = False,
                 model_loader: Callable[["ModelSpec"], "Models"] | None = None,
                 downloader: Callable[[list, bool], None] | None = None,
                 activity: Callable[[str], Any] | None = None):
        if library is None:
            from elite_cli.common.paths import default_home

            library = default_home()
        self.library = Path(library).expanduser()
        self.flags = {"base_model": base_model, "image_encoder": image_encoder, "global_mapper": global_mapper,
                      "local_mapper": local_mapper, "device": device, "dtype": dtype,
                      "output_dir": None if output_dir is None else str(output_dir)}
        self.low_vram, self.compile = low_vram, compile
        self.model_loader = model_loader
        self.downloader = downloader
        self.activity = activity
        self.model_load_seconds: float | None = None
        self.models_loaded_at: float | None = None  # time.perf_counter() when they were ready
        self._settings: dict[str, settings_module.Resolved] | None = None
        self._models: dict["ModelSpec", "Models"] = {}
        # SQLite connections belong to the thread that opened them: one store per thread (a web
        # server's handlers), while the models are shared. One thread at a time loads or runs them.
        self._threads = threading.local()
        self._model_lock = threading.RLock()

    # --- settings, models, library ---------------------------------------------------------------

    @property
    def settings(self) -> dict[str, settings_module.Resolved]:
        """Every setting's value and where it came from (read once per session)."""
        if self._settings is None:
            self._check_library_folder()
            self._settings = settings_module.resolve(self.library, self.flags)
        return self._settings

    def setting(self, key: str) -> str:
        return self.settings[key].value

    @property
    def spec(self) -> "ModelSpec":
        from elite_cli.model.spec import ModelSpec

        values = {key: self.setting(key) for key in MODEL_SETTINGS}
        mapper_cache = self.library / settings_module.MODELS_DIR_NAME / settings_module.HUB_MAPPERS_DIR
        return ModelSpec(**values, low_vram=self.low_vram, compile=self.compile, mapper_cache=str(mapper_cache))

    def fetch_missing_models(self, spec: "ModelSpec | None" = None, *, encoding: bool = True,
                             segmenter: str | None = None, main_process: bool = True) -> None:
        """Download what the models of `spec` (default: this session's) lack in the Hugging Face
        cache; nothing, and no network, when everything is there. encoding=False: generation only,
        which needs the image encoder's config but not its weights; segmenter: also the automatic
        masks' segmenter. Raises ModelError when the Hub refuses or cannot be reached."""
        from elite_cli.model.hub import fetch, missing_downloads

        # Before the Hub is asked (and torch imported to pick a precision): a wrong mapper path
        # fails in a fraction of a second.
        check_local_mappers(spec or self.spec)
        plans = missing_downloads(spec or self.spec, encoding, segmenter)
        if not plans:
            return
        if self.downloader is not None:
            self.downloader(plans, main_process)
        else:
            fetch(plans)

    def _activity(self, text: str) -> Any:
        import contextlib

        return self.activity(text) if self.activity is not None else contextlib.nullcontext()

    @property
    def models(self) -> "Models":
        """The models of the configured settings, loaded on first use and kept."""
        return self.load_models(self.spec)

    def load_models(self, spec: "ModelSpec") -> "Models":
        """The models for `spec` (this session's, or one made for a GPU of several): loaded once."""
        with self._model_lock:
            return self._load_models(spec)

    def _load_models(self, spec: "ModelSpec") -> "Models":
        if spec not in self._models:
            from elite_cli.library.fingerprints import remember

            check_local_mappers(spec)

            if self.model_loader is not None:
                loader = self.model_loader
            else:
                from elite_cli.model.loading import load_models as loader
            started = time.perf_counter()
            models = loader(spec)
            self.models_loaded_at = time.perf_counter()
            self.model_load_seconds = self.models_loaded_at - started
            # So that `elite list` can tell stale concepts without loading (or importing) anything.
            remember(self.library, spec.global_mapper, models.global_fingerprint)
            remember(self.library, spec.local_mapper, models.local_fingerprint)
            self._models[spec] = models
        return self._models[spec]

    @property
    def store(self) -> "ConceptStore":
        """The concept library (this thread's connection to it), created on first use."""
        if self._open_store is None:
            from elite_cli.library import ConceptStore

            self._check_library_folder()
            self._open_store = ConceptStore(self.library)
        return self._open_store

    @property
    def _open_store(self) -> "ConceptStore | None":
        return getattr(self._threads, "store", None)

    @_open_store.setter
    def _open_store(self, store: "ConceptStore | None") -> None:
        self._threads.store = store

    def library_exists(self) -> bool:
        """Whether the library folder is there (reading must not create it)."""
        self._check_library_folder()
        return self.library.exists()

    def existing_store(self) -> "ConceptStore":
        """The library for reading or changing what it holds: a library folder that does not exist is
        an error instead of being made, so a mistyped path does not leave an empty library behind."""
        if self._open_store is None and not self.library_exists():
            raise LibraryError(f"there is no concept library in '{self.library}' yet (`elite add` makes one); "
                               "check --library or ELITE_HOME.")
        return self.store

    def _check_library_folder(self) -> None:
        if self.library.exists() and not self.library.is_dir():
            # Else each operation fails its own way, naming files inside it ('<file>/config.toml').
            raise InputError(f"the library '{self.library}' is a file, not a folder; point --library or ELITE_HOME "
                             "at a folder (it is created on first `elite add`).")

    def close(self) -> None:
        """Close this thread's connection to the library (the models stay loaded)."""
        if self._open_store is not None:
            self._open_store.close()
            self._open_store = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- adding concepts -------------------------------------------------------------------------

    def add_concept(self, image: Any, mask: Any = None, *, name: str | None = None, tags: Iterable[str] = (),
                    replace: bool = False, crop: str = "auto", object_text: str | None = None) -> "StoredConcept":
        """Encode one picture (and its object mask) into a concept and store it; see add_concepts."""
        return self.add_concepts([image], masks=[mask], names=[name], tags=tags, replace=replace, crop=crop,
                                 object_text=object_text)[0]

    def add_concepts(self, images: Sequence[Any], *, masks: Sequence[Any] | None = None,
                     names: Sequence[str | None] | None = None, tags: Iterable[str] = (), replace: bool = False,
                     crop: str = "auto", object_text: str | None = None,
                     on_added: Callable[["StoredConcept", float], None] | None = None,
                     on_mask: Callable[["ChosenMask"], None] | None = None,
                     on_warning: Callable[[str], None] | None = None) -> list["StoredConcept"]:
        """Encode pictures into concepts with one model load; all or (for bad input) none are stored.

        Every picture, mask, tag and name is checked, and each picture's object found (elite_cli/
        masks.py: a mask file, else the picture's transparency, else the segmenter's automatic
        mask; "none": the whole picture), before the models load. A picture already in the
        library comes back with `.duplicate` set instead of being stored twice. names default to
        the file names (a picture given as an image object needs one). crop: "auto" or "object"
        (elite_cli/model/images.py). on_mask(ChosenMask) hears each picture's mask (its source, its
        file) once chosen; advice (an object covering under 2% or over 80% of its picture) goes
        to on_warning(message), else to Python's warnings; on_added(stored, seconds) is called
        after each concept is stored.
        """
        from elite_cli.model.images import check_crop
        from elite_cli.library import name_from_stem, validate_name
        from elite_cli.library.names import validate_tag
        from elite_cli.model.masks import MASK_MODES
        from elite_cli.common.paths import check_file_exists

        images = list(images)
        masks = list(masks) if masks is not None else [None] * len(images)
        # A mask given as an image object (a numpy array, a PIL image: painted in a UI) is recorded
        # as painted; it is stored as a mask file all the same.
        painted = [mask is not None and not isinstance(mask, (str, Path)) for mask in masks]
        wanted_names = list(names) if names is not None else [None] * len(images)
        if not (len(masks) == len(wanted_names) == len(images)):
            raise InputError(f"{len(images)} pictures need as many masks and names (None where there is none), "
                             f"not {len(masks)} masks and {len(wanted_names)} names.")
        tags = tuple(tags)
        choosers: list[Any] = []
        with tempfile.TemporaryDirectory(prefix="elite-add-") as scratch:
            try:
                images = [as_image_file(image, Path(scratch) / f"picture-{number}.png", "image")
                          for number, image in enumerate(images)]
                masks = [mask if isinstance(mask, str) and mask in MASK_MODES
                         else as_image_file(mask, Path(scratch) / f"mask-{number}.png", "mask")
                         for number, mask in enumerate(masks)]
                for image, mask, wanted in zip(images, masks, wanted_names):
                    if image.parent == Path(scratch) and not wanted:
                        raise InputError("a picture given as an image object (not a file) needs a name; pass name=...")
                    check_file_exists(image, "image")
                    if isinstance(mask, Path):
                        check_file_exists(mask, "mask")
                for value in tags:
                    validate_tag(value)
                check_crop(crop)
                final_names = [validate_name(wanted) if wanted else name_from_stem(image.stem)
                               for image, wanted in zip(images, wanted_names)]
                chosen = self._choose_masks(images, masks, object_text, choosers, on_mask, on_warning, painted)
                # Only the hashes are kept: holding every decoded picture of a large batch would cost memory.
                self._check_new_names(final_names, [(choice.image_sha256, choice.mask_sha256) for choice in chosen],
                                      replace)
                return self._encode_and_store(images, chosen, final_names, tags, replace, crop, on_added)
            finally:
                for chooser in choosers:
                    chooser.close()

    def _choose_masks(self, images: list[Path], masks: list[Any], object_text: str | None, choosers: list[Any],
                      on_mask: Callable[["ChosenMask"], None] | None,
                      on_warning: Callable[[str], None] | None, painted: list[bool]) -> list["ChosenMask"]:
        """Every picture (and its mask) decoded, and its object found, before the models load and
        before anything is stored, so that a bad file among several adds none of them. The first
        run downloads the models first (the segmenter too, when a picture may need it), so that a
        failed download leaves no library behind."""
        import contextlib
        import warnings

        from elite_cli.model.masks import MaskChooser

        segmenter, device, dtype = self.setting("segmenter"), self.setting("device"), self.setting("dtype")
        by_option: dict[str, Any] = {}
        for mask in masks:  # one chooser per way of choosing ("auto", "none", None, each file)
            key = str(mask)
            if key not in by_option:
                by_option[key] = MaskChooser(mask, object_text, segmenter, device, dtype)
                choosers.append(by_option[key])
        may_segment = any(chooser.may_segment for chooser in choosers)
        self.fetch_missing_models(encoding=True, segmenter=segmenter if may_segment else None)
        with self._activity("Finding the object...") if may_segment else contextlib.nullcontext():
            chosen = [by_option[str(mask)].choose(image) for image, mask in zip(images, masks)]
        chosen = [dataclasses.replace(choice, source="painted") if was_painted and choice.source == "file" else choice
                  for choice, was_painted in zip(chosen, painted)]
        for choice in chosen:
            if on_mask is not None:
                on_mask(choice)
            if choice.warning:
                if on_warning is not None:
                    on_warning(choice.warning)
                else:
                    warnings.warn(choice.warning, UserWarning, stacklevel=4)
        return chosen

    def _check_new_names(self, names: list[str], source_hashes: list[tuple[str, str]], replace: bool) -> None:
        """Name problems surface before the models load and before anything is stored, so a call
        with several images adds all of them or (for these errors) none."""
        store = self.store
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

    def _encode_and_store(self, images: list[Path], chosen: list["ChosenMask"], names: list[str],
                          tags: tuple[str, ...], replace: bool, crop: str,
                          on_added: Callable[["StoredConcept", float], None] | None) -> list["StoredConcept"]:
        from elite_cli.model.encoder import Encoder

        encoder = None
        added = []
        for image, choice, wanted in zip(images, chosen, names):
            started = time.perf_counter()
            stored_before = None if replace else self._stored_already(choice, crop)
            if stored_before is not None:  # the models are not loaded just to find that out
                added.append(stored_before)
                if on_added is not None:
                    on_added(stored_before, time.perf_counter() - started)
                continue
            encoder = encoder or Encoder(self.models)
            with self._model_lock:
                concept = encoder.encode(image, mask=choice.path, crop=crop)
            concept.provenance.update(choice.provenance)  # an automatic mask is more than "a mask file"
            stored = self.store.add(concept, name=wanted, image_path=image, mask_path=choice.path, tags=tags,
                                    replace=replace)
            added.append(stored)
            if on_added is not None:
                on_added(stored, time.perf_counter() - started)
        return added

    def _stored_already(self, choice: "ChosenMask", crop: str) -> "StoredConcept | None":
        """The concept this picture and mask would give, when the library holds it already for the
        configured mappers (known from their files' recorded fingerprints, without loading them)."""
        from elite_cli.errors import EliteError
        from elite_cli.library.fingerprints import configured_fingerprints
        from elite_cli.model.concept import PREPROCESSING_VERSION

        try:
            current = configured_fingerprints(self.library, self.setting("global_mapper"), self.setting("local_mapper"))
        except EliteError:
            return None
        if current is None:  # not known until the models have been loaded once
            return None
        found = self.store.find_duplicate(choice.image_sha256, choice.mask_sha256, *current,
                                          preprocessing=PREPROCESSING_VERSION, crop=crop)
        return dataclasses.replace(found, duplicate=True) if found is not None else None

    # --- generating ------------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[str] | None = None, *, jobs: Sequence[GenerationJob] | None = None,
                 n: int = 1, seed: int | None = None, steps: int = 50, guidance: float = 5.0, lambda_: float = 0.8,
                 negative_prompt: str = "", width: int = 512, height: int = 512, scheduler: str = "lms",
                 output_dir: str | Path | None = None, batch_size: int | None = None, resume: bool = False,
                 allow_stale: bool = False, progress: Callable[[int, int], None] | None = None,
                 on_image: Callable[[GeneratedImage], None] | None = None,
                 on_warning: Callable[[str], None] | None = None,
                 listener: GenerationListener | None = None, init_image: str | Path | None = None,
                 strength: float | None = None, inpaint: str | Path | None = None, region: str | Path | None = None,
                 region_object: str | None = None, inpaint_model: str | None = None, control: Sequence[str] = (),
                 control_scale: float = 1.0, control_image_is_map: bool = False) -> GenerationResult:
        """Generate `n` images per prompt into output_dir (default: the output_dir setting), each a PNG
        holding its parameters, each with a history row. Image i of a prompt uses seed + i; every
        prompt of a list starts at the same seed (random when None). `jobs` instead of a prompt gives
        each prompt its own settings. progress(step, total) follows the denoising steps of each
        batch, on_image(GeneratedImage) each saved file; warnings go to on_warning(message), else to
        Python's warnings (GenerationWarning). A `listener` (GenerationListener) hears all of it.

        From the user's pictures (docs/modes.md): init_image + strength (img2img); inpaint + region
        (a mask file, white = repaint, or "auto" with region_object) + strength, inpaint_model (a
        9-channel inpainting model; default: the inpaint_model setting, empty = the base UNet);
        control ["canny=FILE", "depth=FILE"] with control_scale and control_image_is_map."""
        from elite_cli.model.generation_limits import SEED_LIMIT
        from elite_cli.model.mode_options import build_image_mode

        if (prompt is None) == (jobs is None):
            raise InputError("give exactly one of a prompt (or a list of prompts) and jobs.")
        check_run_options(batch_size=batch_size, resume=resume, seed_known=seed is not None or jobs is not None)
        if jobs is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts:
                raise InputError('there are no prompts; pass text such as "<mycat> on the beach".')
            mode_settings = ("controlnet_canny", "controlnet_depth", "depth_model", "segmenter", "inpaint_model")
            mode = build_image_mode(
                init_image=init_image, strength=strength, inpaint=inpaint, region=region, region_object=region_object,
                inpaint_model=inpaint_model,
                control=list(control), control_scale=control_scale, control_image_is_map=control_image_is_map,
                settings={key: self.setting(key) for key in mode_settings})
            first_seed = secrets.randbelow(max(1, SEED_LIMIT - n)) if seed is None else seed
            jobs = [GenerationJob(prompt=text, negative_prompt=negative_prompt, seed=first_seed, steps=steps,
                                  guidance_scale=guidance, llambda=lambda_, width=width, height=height,
                                  scheduler=scheduler, num_images=n, mode=mode)
                    for text in prompts]
        return self._run(list(jobs), None, output_dir, batch_size, resume, allow_stale,
                         listener or CallbackListener(progress, on_image, on_warning))

    def repeat(self, run_or_png: str | Path, *, output_dir: str | Path | None = None, batch_size: int | None = None,
               resume: bool = False, allow_stale: bool = False, progress: Callable[[int, int], None] | None = None,
               on_image: Callable[[GeneratedImage], None] | None = None, on_warning: Callable[[str], None] | None = None,
               listener: GenerationListener | None = None) -> GenerationResult:
        """Make the images of an earlier run again, with its own settings: a run id (or a unique
        prefix, as `history` lists them) or a PNG written by `generate`. A run that was interrupted
        is rebuilt whole; with resume=True only what output_dir lacks is made."""
        from elite_cli.generation.jobs import jobs_from_history, jobs_from_png

        check_run_options(batch_size=batch_size, resume=resume, seed_known=True)
        again = str(run_or_png)
        store = self.store
        # A file (a PNG, or a picture that is not one: said so, not "no such run") or a run id.
        is_file = again.lower().endswith((".png", ".jpg", ".jpeg", ".webp")) or Path(again).is_file()
        jobs = jobs_from_png(Path(again)) if is_file else jobs_from_history(store, again)
        return self._run(jobs, again, output_dir, batch_size, resume, allow_stale,
                         listener or CallbackListener(progress, on_image, on_warning))

    def _run(self, jobs: list[GenerationJob], again: str | None, output_dir: str | Path | None, batch_size: int | None,
             resume: bool, allow_stale: bool, listener: GenerationListener) -> GenerationResult:
        from elite_cli.generation.run import run_generation

        store = self.store
        directory = Path(output_dir) if output_dir is not None else Path(self.setting("output_dir"))
        with self._model_lock:  # one generation at a time on the shared models
            return run_generation(store, jobs, directory, self.spec, self.load_models, listener, again=again,
                                  batch_size=batch_size, resume=resume, allow_stale=allow_stale,
                                  fetch_models=lambda spec, main: self._fetch_for_generation(spec, main, jobs))

    def _fetch_for_generation(self, spec: "ModelSpec", main_process: bool, jobs: list[GenerationJob] = ()) -> None:
        # Generation needs the image encoder's config only: its weights are not downloaded.
        self.fetch_missing_models(spec, encoding=False, main_process=main_process)
        # And the ControlNets, depth model, inpainting model or segmenter that its modes name.
        values = {key: value for job in jobs if job.mode is not None for key, value in job.mode.model_settings().items()}
        if values:
            from elite_cli.model.hub import fetch, missing_mode_downloads

            plans = missing_mode_downloads(values, spec)
            if plans:
                (self.downloader or (lambda plans, main: fetch(plans)))(plans, main_process)

    # --- the library -----------------------------------------------------------------------------

    def concepts(self, tag: str | None = None, pattern: str | None = None) -> list["StoredConcept"]:
        """The library's concepts by name (only those with `tag`, or a name matching the glob
        `pattern`); none when there is no library yet (it is not created)."""
        return self.store.list(tag=tag, pattern=pattern) if self.library_exists() else []

    def stale_flags(self, concepts: Sequence["StoredConcept"]) -> list[bool | None]:
        """Per concept: whether `reencode` would change it: encoded by other mappers than the
        configured ones (which `generate` refuses) or with an older preprocessing of the picture;
        None when only the mappers could tell and the configured mapper files cannot be read.
        Known without loading the models."""
        return [True if not stored.preprocessing_is_current() else flag
                for stored, flag in zip(concepts, self.mapper_stale_flags(concepts))]

    def mapper_stale_flags(self, concepts: Sequence["StoredConcept"]) -> list[bool | None]:
        """Per concept: encoded by other mappers than the configured ones (`generate` refuses those
        unless allow_stale), or None for all when the configured mapper files cannot be read.
        Known without loading the models."""
        if not concepts:
            return []
        from elite_cli.errors import EliteError
        from elite_cli.library.fingerprints import configured_fingerprints

        try:
            current = configured_fingerprints(self.library, self.setting("global_mapper"), self.setting("local_mapper"))
        except EliteError:  # a bad config file: listing still works, staleness is unknown
            current = None
        if current is None:
            return [None] * len(concepts)
        return [not stored.mapper_matches(*current) for stored in concepts]

    def concept(self, name_or_id: str) -> "StoredConcept":
        return self.existing_store().get(name_or_id)

    def mask_origin(self, concept: "str | StoredConcept") -> dict[str, str]:
        """Where a concept's mask came from: {mask_source ("file", "painted", "alpha", "auto", "none" or "" when
        not recorded), mask_model, mask_object} (`elite_cli.model.masks.describe_mask_source` words it)."""
        store = self.existing_store()
        return store.mask_origin(store.get(concept) if isinstance(concept, str) else concept)

    def rename(self, name_or_id: str, new_name: str) -> "StoredConcept":
        return self.existing_store().rename(name_or_id, new_name)

    def tag(self, name_or_id: str, *tags: str) -> "StoredConcept":
        return self.existing_store().tag(name_or_id, *tags)

    def untag(self, name_or_id: str, *tags: str) -> "StoredConcept":
        return self.existing_store().untag(name_or_id, *tags)

    def remove(self, names: str | Sequence[str], *, keep_sources: bool = False) -> list[Removed]:
        """Remove concepts; every name must exist before any is removed."""
        store = self.existing_store()
        records = [store.get(name) for name in ([names] if isinstance(names, str) else names)]
        return [Removed(record, store.remove(record.id, keep_sources=keep_sources)) for record in records]

    def history(self, limit: int | None = 50) -> list[RunSummary]:
        """Earlier generate calls, newest first (`limit` runs; None: all)."""
        if limit is not None and limit < 0:
            raise InputError(f"{limit} is not a number of runs; pass a positive number, or 0 for every run.")
        runs = self.store.list_runs(limit=limit or None) if self.library_exists() else []
        return [RunSummary(run_id=images[0].run_id, created=images[0].created,
                           prompts=list(dict.fromkeys(image.prompt for image in images)),
                           seed=min(image.seed - image.image_index for image in images), images=images)
                for images in runs]

    def export(self, name_or_id: str, path: str | Path, format: str = "elite", *, token: str | None = None,
               overwrite: bool = False) -> "ExportResult":
        """Write a concept to a file: elite (the whole concept), diffusers or a1111 (word embedding)."""
        if format not in EXPORT_FORMATS:
            raise InputError(f"--format '{format}' is not one of {', '.join(EXPORT_FORMATS)}.")
        return self.existing_store().export(name_or_id, Path(path), format, token=token, overwrite=overwrite)

    def import_concept(self, path: str | Path, *, name: str | None = None, replace: bool = False) -> "StoredConcept":
        """Add a concept from a file written by `export` (format elite)."""
        from elite_cli.library.sharing import read_bundle
        from elite_cli.common.paths import check_file_exists

        path = Path(path)
        check_file_exists(path, "concept file")
        read_bundle(path, name)  # a refused file fails before the library is opened (or created)
        try:
            return self.store.import_concept(path, name=name, replace=replace)
        except NameClash as clash:
            if clash.taken is None:
                raise
            raise NameClash(f"a concept named '{clash.taken}' already exists; pass --name to import it under another "
                            "name, or --replace to replace that one.", taken=clash.taken) from None

    def check(self, repair: bool = False) -> LibraryCheck:
        """Check the index, the concept files and thumbnails (every file's hash); with repair, fix
        what can be fixed first (an unreadable index is rebuilt from the concept files)."""
        from elite_cli.errors import IndexUnreadable
        from elite_cli.library import ConceptStore

        repaired = None
        try:
            store = self.existing_store()
            if repair and _index_is_corrupt(store):
                self.close()
                store = None
        except IndexUnreadable:
            if not repair:
                raise
            self.close()
            store = None
        if store is None:
            # The concept files describe themselves, so a new index can be built from them alone.
            self._open_store, repaired = ConceptStore.rebuild_index(self.library)
        elif repair:
            repaired = store.repair()
        # A repair ends with a full check (every file's hash read): not a second one here.
        report = repaired.after if repaired else self.store.check()
        return LibraryCheck(report=report, repaired=list(repaired.actions) if repaired else [],
                            quarantine=Path(repaired.quarantine) if repaired and repaired.quarantine else None)

    def reencode(self, names: Sequence[str] | None = None, *, crop: str | None = None,
                 on_reencoded: Callable[["Reencoded"], None] | None = None) -> "ReencodeResult":
        """Encode concepts again from their stored source pictures with the configured models (all
        of them without names); concepts those models made already, with the current preprocessing
        (and `crop`, when given), are left as they are, and when all are, the models are not even
        loaded. Each concept keeps its crop mode unless `crop` ("auto" or "object") is given. A
        named concept without source pictures fails before anything loads; without names, such
        stale concepts end up in `result.skipped` (`result.require_sources()` raises for them).
        A concept whose new encoding is another concept's merges into that one (`merged_from`).
        on_reencoded(item) follows each concept."""
        if crop is not None:
            from elite_cli.model.images import check_crop

            check_crop(crop)
        store = self.existing_store()
        # Resolve every name first: a typo fails before the models load.
        records = [store.get(name) for name in names] if names else store.list()
        result = ReencodeResult(store)
        if not records:
            return result
        if names:  # a named concept that cannot be re-encoded fails before the models load, too
            store.require_sources(records)
        image_encoder = self.setting("image_encoder")
        if all(flag is False for flag in self.stale_flags(records)) and all(r.image_encoder == image_encoder for r in records) \
                and all(crop in (None, r.crop) for r in records):
            # Every concept was made by the configured models (known without torch): nothing to load.
            for record in records:
                result.done.append(Reencoded(record, changed=False, seconds=None))
                if on_reencoded is not None:
                    on_reencoded(result.done[-1])
            return result
        from elite_cli.model.encoder import Encoder

        self.fetch_missing_models(encoding=True)
        models = self.models
        encoder = Encoder(models)
        for record in records:
            started = time.perf_counter()
            if record.mapper_matches(models.global_fingerprint, models.local_fingerprint) \
                    and record.image_encoder == image_encoder and record.preprocessing_is_current() \
                    and crop in (None, record.crop):
                stored, changed = record, False  # made by these models already: nothing to encode
            elif store.without_sources([record]):
                result.skipped.append(record)  # only without names (named ones were checked above)
                continue
            else:
                with self._model_lock:
                    stored = store.reencode(record.id, encoder, crop=crop)
                # Equal tensors with an updated record (e.g. a non-square picture, which crops as
                # before) still bring the concept up to date: it is not stale any more.
                changed = not stored.duplicate or (stored.preprocessing, stored.crop) != (record.preprocessing, record.crop)
            # Its new encoding was another concept's: the two merged under the other's name.
            merged = stored.name.lower() != record.name.lower()
            result.done.append(Reencoded(stored, changed=changed or merged, seconds=time.perf_counter() - started,
                                         merged_from=record.name if merged else None))
            if on_reencoded is not None:
                on_reencoded(result.done[-1])
        return result


def _index_is_corrupt(store: "ConceptStore") -> bool:
    """Whether library.db is damaged beyond an in-place repair (SQLite's quick_check fails)."""
    import sqlite3

    try:
        return any(problem.kind == "index-corrupt" for problem in store.check(verify_hashes=False).problems)
    except sqlite3.DatabaseError:
        return True


def as_image_file(source: Any, scratch: Path, what: str) -> Path | None:
    """A picture or mask as a file: paths stay as they are; a PIL image or a numpy array (a mask
    painted in a UI) is written to `scratch` as PNG, so the library keeps a copy like any source."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        return Path(source).expanduser()
    from PIL import Image

    if not isinstance(source, Image.Image):
        source = array_image(source, what)
    source.save(scratch, format="PNG")
    return scratch


def array_image(array: Any, what: str) -> "Any":
    """A numpy array as a PIL image: HxW masks (bool, 0-255 integers or 0-1 floats) as greyscale,
    HxWx3 / HxWx4 uint8 pictures as RGB / RGBA."""
    import numpy as np
    from PIL import Image

    if not isinstance(array, np.ndarray):
        raise InputError(f"the {what} must be a file path, a PIL image or a numpy array, not {type(array).__name__}.")
    if array.ndim == 2:
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA")
    raise InputError(f"the {what} array has shape {array.shape} ({array.dtype}); pass HxW for a mask or HxWx3/HxWx4 "
                     "uint8 for a picture.")
