"""Models from the Hugging Face Hub: where each configured model comes from, what elite fetches of
it, and fetching it.

A model setting is a local folder (or, for the mappers, a file), a hub id (`owner/name`) or, for
the mappers, a file in a hub repo written `hf://owner/name/path/in/repo` (`hf://owner/name@rev/...`
for another revision than main). A hub model is used from the Hugging Face cache when every file
elite loads of it is there; otherwise the missing files are downloaded, and only those: the
model info the Hub sends lists the repo's files, and elite picks what it loads (no safety
checker, no second copy of the weights in another format; the fp16 variant where the weights run
in fp16 and the repo has one). transformers and diffusers then load from the local folder, so a
load never goes to the network on its own and cannot half-succeed (transformers 5 returns an
empty tokenizer instead of raising when asked for a hub tokenizer that is not cached).

The cache decides first: a command whose models are all cached makes no request at all. For what
is missing, huggingface_hub asks the Hub for the model's file list and each file's metadata, and
elite downloads the files itself (`download_file`): ETags and commit ids must be checksums before
they name anything in the cache, every file is checked against its checksum before it enters it,
the token goes to the endpoint's origin only, every request has a timeout (HF_HUB_ETAG_TIMEOUT,
HF_HUB_DOWNLOAD_TIMEOUT), and a cut or stalled transfer goes on with a Range request from a partial
file that also outlives Ctrl-C. The files land in huggingface_hub's documented cache layout, so
every Hugging Face tool finds them. HF_ENDPOINT (mirrors), HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE,
HF_TOKEN and the usual proxy variables apply as they do for every Hugging Face tool
(docs/network.md). No torch here.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from elite_cli.common.config import HF_SCHEME
from elite_cli.errors import InputError, ModelError

LABELS = {"base_model": "base model", "image_encoder": "image encoder", "global_mapper": "global mapper",
          "local_mapper": "local mapper"}
FLAGS = {key: "--" + key.replace("_", "-") for key in LABELS}

# The three weighted parts of a Stable Diffusion folder elite loads (besides tokenizer and scheduler).
BASE_COMPONENTS = ("text_encoder", "unet", "vae")
WEIGHT_FILE = re.compile(
    r"^(?P<stem>model|pytorch_model|diffusion_pytorch_model)(?:\.(?P<variant>[A-Za-z0-9_]+))?"
    r"(?:-\d+-of-\d+)?\.(?P<format>safetensors|bin)$")
WEIGHT_INDEX = re.compile(
    r"^(?P<stem>model|pytorch_model|diffusion_pytorch_model)\.(?P<format>safetensors|bin)\.index"
    r"(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$")
# Weight groups in the order they are preferred: safetensors before pickles, and the fp16
# variant first only where the weights run in fp16 anyway (it halves the download).
PREFERENCE = {False: (("", "safetensors"), ("", "bin"), ("fp16", "safetensors"), ("fp16", "bin")),
              True: (("fp16", "safetensors"), ("", "safetensors"), ("fp16", "bin"), ("", "bin"))}


# ---- what a setting names ----------------------------------------------------------------------

@dataclass(frozen=True)
class HubFile:
    """A file in a hub model repo: `hf://owner/name[@revision]/path/in/repo`."""

    repo_id: str
    revision: str
    path: str

    def __str__(self) -> str:
        revision = "" if self.revision == "main" else f"@{self.revision}"
        return f"{HF_SCHEME}{self.repo_id}{revision}/{self.path}"


def is_hub_file(value: str) -> bool:
    return value.startswith(HF_SCHEME)


def parse_hub_file(value: str) -> HubFile | None:
    """The hub file an `hf://` setting names; None for anything else (a local path)."""
    if not is_hub_file(value):
        return None
    parts = value[len(HF_SCHEME):].split("/", 2)
    if len(parts) < 3 or not all(parts) or parts[2].endswith("/"):
        raise InputError(f"'{value}' is not a hub file; write hf://owner/repo/path/in/repo "
                         "(or hf://owner/repo@revision/path/in/repo).")
    name, _, revision = parts[1].partition("@")
    for part, what in ((parts[2], "path"), (revision or "main", "revision")):
        if repo_path_problem(part):
            raise InputError(f"'{value}' is not a hub file: its {what} '{part}' is {repo_path_problem(part)}; write "
                             "hf://owner/repo/path/in/repo (or hf://owner/repo@revision/path/in/repo).")
    return HubFile(f"{parts[0]}/{name}", revision or "main", parts[2])


def is_hub_id(value: str) -> bool:
    """'owner/name' that is not an existing path: a model to find in the cache or on the Hub."""
    if value.count("/") != 1 or value.startswith((".", "/", "~")) or "\\" in value:
        return False
    return not Path(value).expanduser().exists()


# ---- which files elite loads ------------------------------------------------------------------

def _weight_groups(names: Iterable[str], folder: str) -> dict[tuple[str, str], list[str]]:
    """Weight files directly in `folder` ('' for the root) by (variant, format)."""
    prefix = f"{folder}/" if folder else ""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        if not name.startswith(prefix) or "/" in name[len(prefix):]:
            continue
        match = WEIGHT_FILE.match(name[len(prefix):]) or WEIGHT_INDEX.match(name[len(prefix):])
        if match:
            groups.setdefault((match["variant"] or "", match["format"]), []).append(name)
    return groups


def _pick_weights(names: set[str], folder: str, prefer_fp16: bool, have: set[str]) -> list[str]:
    """The weight files to use in `folder`: a group already complete in `have` (never a second
    copy of the weights), else the preferred group the listing has; [] when it has none."""
    groups = _weight_groups(names, folder)
    for key in PREFERENCE[prefer_fp16]:
        if key in groups and set(groups[key]) <= have:
            return sorted(groups[key])
    for key in PREFERENCE[prefer_fp16]:
        if key in groups:
            return sorted(groups[key])
    return []


def select_files(kind: str, names: Iterable[str], prefer_fp16: bool = False,
                 have: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(the files elite loads of a model with these files, what it lacks to be loadable).

    kind: "base_model" (a diffusers Stable Diffusion folder: tokenizer, text encoder, UNet, VAE,
    scheduler config), "image_encoder" (config and weights), "image_encoder_config" (what
    `elite gen` needs of it: the config alone) or "transformers" (a model with its tokenizer or
    processor files at the root, as the `elite eval` metric models are).
    """
    names, have = set(names), set(have)
    wanted: list[str] = []
    lacking: list[str] = []

    def need(name: str) -> None:
        (wanted if name in names else lacking).append(name)

    def weights(folder: str) -> None:
        chosen = _pick_weights(names, folder, prefer_fp16, have)
        wanted.extend(chosen)
        if not chosen:
            lacking.append(f"{folder}/ weights" if folder else "weights (model.safetensors)")

    if kind == "base_model":
        for optional in ("model_index.json", "scheduler/scheduler_config.json"):
            if optional in names:
                wanted.append(optional)
        # The tokenizer: vocab.json + merges.txt (as the SD repos have it) or one tokenizer.json
        # (as transformers 5 saves it), with its config files.
        wanted.extend(sorted(name for name in names if name.startswith("tokenizer/") and name.count("/") == 1))
        if "tokenizer/tokenizer.json" not in names:
            need("tokenizer/vocab.json")
            need("tokenizer/merges.txt")
        for component in BASE_COMPONENTS:
            need(f"{component}/config.json")
            weights(component)
    elif kind in ("image_encoder", "image_encoder_config"):
        need("config.json")
        if kind == "image_encoder":
            weights("")
    elif kind == "unet":  # a 9-channel inpainting model: only its UNet is loaded
        need("unet/config.json")
        weights("unet")
    elif kind == "transformers":
        need("config.json")
        wanted.extend(sorted(name for name in names if "/" not in name and name != "config.json"
                             and name.endswith((".json", ".txt")) and not WEIGHT_INDEX.match(name)))
        weights("")
    else:  # pragma: no cover - callers pass one of the kinds above
        raise ValueError(kind)
    return sorted(set(wanted)), lacking


def folder_names(folder: Path) -> set[str]:
    """Every file under a folder (links followed; a broken link is no file), as 'a/b' paths."""
    found = set()
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(root) / name
            if path.is_file():
                found.add(path.relative_to(folder).as_posix())
    return found


def weights_variant(folder: Path, prefer_fp16: bool) -> str | None:
    """The variant ("fp16") to load from a folder holding weights, None for the plain files."""
    chosen = _pick_weights(folder_names_shallow(folder), "", prefer_fp16, set())
    if chosen:
        match = WEIGHT_FILE.match(Path(chosen[0]).name) or WEIGHT_INDEX.match(Path(chosen[0]).name)
        return (match["variant"] or None) if match else None
    return None


def folder_names_shallow(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in folder.iterdir() if entry.is_file()}
    except OSError:
        return set()


# ---- the Hugging Face cache -------------------------------------------------------------------

def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# The file that shows where a repo's snapshot is in the cache: one every loadable copy has.
MARKERS = {"base_model": "unet/config.json", "image_encoder": "config.json", "image_encoder_config": "config.json",
           "transformers": "config.json"}


def cached_snapshot(repo_id: str, kind: str, revision: str = "main") -> Path | None:
    """The cache's snapshot folder of a repo (None when nothing of it is cached), asked of huggingface_hub."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, MARKERS[kind], revision=revision)
    if isinstance(found, str):
        return Path(found).parents[MARKERS[kind].count("/")]
    return None


def size_on_disk(folder: Path, names: Iterable[str]) -> int:
    total = 0
    for name in names:
        try:
            total += (folder / name).stat().st_size
        except OSError:
            pass
    return total


# ---- plans --------------------------------------------------------------------------------------

@dataclass
class PlannedFile:
    path: str
    size: int | None  # from the Hub's metadata; None when not asked
    cached: bool


@dataclass
class ModelPlan:
    """Where one model setting comes from, and what fetching it takes.

    state: "folder" (a local folder or file), "cached" (everything elite loads of it is in the
    Hugging Face cache), "partial" (some of it is) or "download" (none of it is).
    """

    key: str
    value: str
    kind: str
    state: str
    repo_id: str = ""
    revision: str = "main"
    location: Path | None = None  # the folder, file or cache snapshot
    files: list[PlannedFile] = field(default_factory=list)  # when planned against the Hub
    lacking: list[str] = field(default_factory=list)  # what the cache lacks, as far as it tells
    cached_bytes: int = 0
    commit: str = ""  # the commit the Hub serves the revision at (40 hex digits), once asked
    recheck: bool = False  # `elite models download --force`: check cached files against their checksums

    @property
    def label(self) -> str:
        return LABELS.get(self.key, self.key.replace("_", " "))

    @property
    def to_fetch(self) -> list[PlannedFile]:
        return [item for item in self.files if not item.cached]

    @property
    def fetch_bytes(self) -> int:
        return sum(item.size or 0 for item in self.to_fetch)

    @property
    def needs_fetch(self) -> bool:
        return self.state in ("partial", "download")


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, links followed, is in `folder` (links followed)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def in_cache(entry: Path, repo_id: str) -> bool:
    """Whether a snapshot entry of a repo is one of its blobs (a link) or a copy in its snapshots
    (where links are not available): never a file elsewhere that a hostile server had it link to."""
    return in_storage(entry, repo_cache_folder(repo_id))


def in_storage(entry: Path, storage: Path) -> bool:
    return inside(entry, storage / "blobs") or inside(entry, storage / "snapshots")


def local_plan(key: str, value: str, kind: str) -> ModelPlan:
    """Where a model setting stands without asking the network: a folder, cached, or to download."""
    hub_file = parse_hub_file(value)
    if hub_file is not None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_file.repo_id, hub_file.path, revision=hub_file.revision)
        if isinstance(found, str) and in_cache(Path(found), hub_file.repo_id):
            return ModelPlan(key, value, kind, "cached", hub_file.repo_id, hub_file.revision, Path(found),
                             cached_bytes=Path(found).stat().st_size)
        return ModelPlan(key, value, kind, "download", hub_file.repo_id, hub_file.revision, lacking=[hub_file.path])
    if not is_hub_id(value):
        return ModelPlan(key, value, kind, "folder", location=Path(value).expanduser())
    snapshot = cached_snapshot(value, kind)
    if snapshot is None:
        return ModelPlan(key, value, kind, "download", value)
    names = folder_names(snapshot)
    wanted, lacking = select_files(kind, names)
    # An entry that leads out of the cache is no cached file: the next download links it anew.
    escaping = [name for name in wanted if not in_cache(snapshot / name, value)]
    lacking += escaping
    state = "partial" if lacking else "cached"
    return ModelPlan(key, value, kind, state, value, location=snapshot, lacking=lacking,
                     cached_bytes=size_on_disk(snapshot, wanted))


# A commit id as the Hub gives it, and the two shapes of an ETag: a git blob id (small files) or the
# sha256 of the content (LFS files). Anything else never becomes a path in the cache.
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def repo_path_problem(name: str) -> str | None:
    """Why a file name from a listing is not a path inside a repo (None when it is one)."""
    if not isinstance(name, str) or not name:
        return "an empty name"
    if name.startswith("/") or "\\" in name or "\0" in name:
        return "not a relative path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a path that leaves its folder" if ".." in name.split("/") else "not a plain path"
    return None


def hub_plan(plan: ModelPlan, prefer_fp16: bool, recheck: bool = False) -> ModelPlan:
    """The files to fetch for a model the cache lacks (or lacks some of), asked of the Hub.
    recheck: ask even when everything is cached, and plan every file (`--force`).

    Raises ModelError naming the model and the ways out when the Hub cannot be reached or refuses.
    """
    if plan.state == "folder" or not (plan.needs_fetch or recheck):
        return plan
    if offline():
        raise not_reachable(plan, "HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(plan.repo_id, revision=plan.revision, files_metadata=True, timeout=answer_timeout())
    except Exception as error:  # every failure is reported as one sentence
        raise hub_error(plan, error) from None
    origin = endpoint()
    if not isinstance(info.sha, str) or not COMMIT_ID.fullmatch(info.sha):
        raise ModelError(f"the server at {origin} gave the {plan.label} '{plan.value}' the commit id {short(info.sha)}, "
                         "which is not one (40 hex digits); elite fetched nothing. Check HF_ENDPOINT: it does not "
                         "behave like a Hugging Face Hub.")
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
    for name in sizes:
        problem = repo_path_problem(name)
        if problem:
            raise ModelError(f"the server at {origin} lists a file {short(name)} in {plan.repo_id} ({problem}); elite "
                             "fetched nothing of it. Check HF_ENDPOINT: it does not behave like a Hugging Face Hub.")
    plan.commit, plan.recheck = info.sha, recheck
    have = folder_names(plan.location) if plan.location is not None and plan.location.is_dir() else set()
    hub_file = parse_hub_file(plan.value)
    if hub_file is not None:
        if hub_file.path not in sizes:
            raise ModelError(f"the {plan.label} '{plan.value}': {plan.repo_id} on {origin} has no file "
                             f"'{hub_file.path}'; check the path, or pass a local file with {FLAGS[plan.key]}.")
        wanted, lacking = [hub_file.path], []
    else:
        wanted, lacking = select_files(plan.kind, sizes, prefer_fp16, have)
    if lacking:
        raise ModelError(f"the {plan.label} '{plan.value}' on {origin} lacks {lacking[0]}, so elite cannot load "
                         f"it; pass another hub id or a local folder with {FLAGS.get(plan.key, '')}.")
    # A file is cached when it is in the snapshot of the commit the Hub serves now (and stays in the cache).
    snapshot = repo_cache_folder(plan.repo_id) / "snapshots" / plan.commit
    plan.files = [PlannedFile(name, sizes[name], not recheck and (snapshot / name).is_file()
                              and in_cache(snapshot / name, plan.repo_id)) for name in wanted]
    return plan


def short(value: object) -> str:
    """A value a server sent, quoted and cut short enough for one line."""
    text = repr(value)
    return text if len(text) <= 72 else text[:69] + "..."


# ---- errors -------------------------------------------------------------------------------------

def ways_out(plan: ModelPlan) -> str:
    flag = FLAGS.get(plan.key)
    local = f", or pass {flag} a local {'file' if plan.key.endswith('mapper') else 'folder'}" if flag else ""
    return (f"connect to the internet (or set HF_ENDPOINT to a reachable mirror), run `elite models download` "
            f"on a connected machine and copy its Hugging Face cache ({cache_dir()}) here{local}")


def not_reachable(plan: ModelPlan, reason: str) -> ModelError:
    if plan.state == "partial" and plan.lacking:
        more = f" and {len(plan.lacking) - 1} more" if len(plan.lacking) > 1 else ""
        what = f"only partly in the Hugging Face cache (missing {plan.lacking[0]}{more})"
    elif plan.state == "cached":
        what = "in the Hugging Face cache, to be checked against the Hub,"
    else:
        what = "not in the Hugging Face cache"
    return ModelError(f"the {plan.label} '{plan.value}' is {what} and {endpoint()} cannot be reached ({reason}); "
                      f"{ways_out(plan)}.")


def timed_out(error: BaseException) -> bool:
    """A connect or read timeout of the HTTP client huggingface_hub uses (httpx or its fork)."""
    return isinstance(error, TimeoutError) or any(cls.__name__ == "TimeoutException" for cls in type(error).__mro__)


class TransferNotAnswered(Exception):
    """A file's GET got no answer at all (not even a status line) within HF_HUB_DOWNLOAD_TIMEOUT,
    try after try: the timeout that governed is the download's, not the metadata request's."""

    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


def no_answer(plan: ModelPlan, seconds: float, variable: str) -> ModelError:
    """A server that accepted the connection and then said nothing: a hung proxy, a captive portal."""
    return not_reachable(plan, f"no answer within {seconds:g} s, {variable}; a stalled proxy or mirror? "
                               "HF_HUB_OFFLINE=1 keeps elite to the cache")


def hub_error(plan: ModelPlan, error: Exception) -> ModelError:
    """One sentence for a failed Hub request: gated, not found, unreachable, or stopped."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError) or status in (401, 403) and not isinstance(error, RepositoryNotFoundError):
        return ModelError(f"the {plan.label} '{plan.repo_id}' is gated on {endpoint()}: accept its licence on "
                          f"{endpoint()}/{plan.repo_id}, then run `hf auth login` or set HF_TOKEN.")
    if isinstance(error, RepositoryNotFoundError):
        return ModelError(f"the {plan.label} '{plan.repo_id}' was not found on {endpoint()} (a private or gated one "
                          f"needs `hf auth login` or HF_TOKEN); check the name, or pass {FLAGS.get(plan.key, 'a')} "
                          "a local folder.")
    if isinstance(error, RevisionNotFoundError):
        return ModelError(f"the {plan.label} '{plan.value}': {plan.repo_id} has no revision '{plan.revision}' on "
                          f"{endpoint()}; check the name after '@'.")
    if isinstance(error, EntryNotFoundError):
        return ModelError(f"the {plan.label} '{plan.value}' is not on {endpoint()} ({first_line(error)}); check the path.")
    if isinstance(error, OfflineModeIsEnabled):
        return not_reachable(plan, "HF_HUB_OFFLINE is set")
    if isinstance(error, TransferNotAnswered):
        return no_answer(plan, error.seconds, "HF_HUB_DOWNLOAD_TIMEOUT")
    if timed_out(error):  # model_info and the file metadata wait HF_HUB_ETAG_TIMEOUT
        return no_answer(plan, answer_timeout(), "HF_HUB_ETAG_TIMEOUT")
    if isinstance(error, HfHubHTTPError) and status is not None and status >= 500:
        return not_reachable(plan, f"the server answered {status}")
    if isinstance(error, HfHubHTTPError) and status is not None:
        return ModelError(f"the server at {endpoint()} refused the {plan.label} '{plan.value}' ({status}: "
                          f"{first_line(error)}); check HF_ENDPOINT and the model's name.")
    return not_reachable(plan, first_line(error))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157].rstrip() + "..."


# ---- fetching -----------------------------------------------------------------------------------

# Called with (plan, file) as a file starts and with a byte count as bytes arrive (or are found
# already on disk, when a cut download resumes).
FileStarted = Callable[[ModelPlan, PlannedFile], None]
BytesDone = Callable[[int], None]

PARTIAL_SUFFIX = ".elite-partial"
# Tries in a row that bring no byte (a stall past the timeout, a cut) before a download gives up.
RETRIES_WITHOUT_PROGRESS = 3


def answer_timeout() -> float:
    """Seconds to wait for the Hub's first answer to a request (HF_HUB_ETAG_TIMEOUT, default 10)."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT)


def download_timeout() -> float:
    """Seconds to wait for the next bytes of a file (HF_HUB_DOWNLOAD_TIMEOUT, default 10)."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def repo_cache_folder(repo_id: str) -> Path:
    """A model repo's folder in the Hugging Face cache (its documented layout: models--owner--name)."""
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def origin_of(url: str) -> tuple[str, str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)


def request_headers(url: str) -> dict[str, str]:
    """huggingface_hub's headers (user agent, token), the token only for the endpoint's own origin:
    a redirect to a CDN or anywhere else gets no credentials."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()
    if origin_of(url) != origin_of(endpoint()):
        headers = {name: value for name, value in headers.items() if name.lower() != "authorization"}
    return headers


def matches_etag(path: Path, etag: str) -> bool:
    """Whether a file's content is what its ETag says: the sha256 (64 hex digits, LFS files) or the
    git blob id (40: sha1 of 'blob <size>\\0' and the content, small files)."""
    if len(etag) == 64:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == etag


def download_file(plan: ModelPlan, item: PlannedFile, on_bytes: BytesDone | None) -> Path:
    """Fetch one file of a planned model into the Hugging Face cache's layout; its snapshot entry.

    Every file, small or large, goes through here (not huggingface_hub's hf_hub_download): its ETag
    must be a checksum, it is checked against that checksum before it enters the cache, the token
    goes to the endpoint's origin only, every request has a timeout, and a cut or stalled transfer
    goes on with `Range` from a partial file that also outlives Ctrl-C. The layout is the one
    huggingface_hub documents and reads (blobs/<etag>, snapshots/<commit>/<path> linking to it,
    refs/<revision>), so every Hugging Face tool finds the files.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(plan.repo_id, item.path, revision=plan.commit)
    metadata = get_hf_file_metadata(url, timeout=answer_timeout())
    describe = f"the {plan.label} file '{item.path}' ({plan.repo_id})"
    etag = metadata.etag or ""
    if not ETAG.fullmatch(etag):
        raise ModelError(f"the server at {endpoint()} sent {describe} with the ETag {short(metadata.etag)}, which is not "
                         "a checksum (40 or 64 hex digits); elite fetched nothing of it. Check HF_ENDPOINT: it does "
                         "not behave like a Hugging Face Hub.")
    if metadata.size is not None and item.size is not None and metadata.size != item.size:
        raise ModelError(f"the server at {endpoint()} lists {describe} with {item.size} bytes but announces "
                         f"{metadata.size} when asked for it; elite fetched nothing of it. Run the command again; if "
                         "it says the same, the server (HF_ENDPOINT) is serving an inconsistent copy.")
    storage = repo_cache_folder(plan.repo_id)
    blob = storage / "blobs" / etag
    if plan.recheck and blob.is_file() and not matches_etag(blob, etag):
        blob.unlink()  # damaged on disk, or cached unchecked by an older elite: fetched anew below
    if blob.is_file():
        if on_bytes:
            on_bytes(blob.stat().st_size)
    else:
        fetch_blob(blob, etag, metadata.location, metadata.size, describe, on_bytes)
    entry = link_into_snapshot(storage, plan.commit, item.path, blob)
    if plan.revision != plan.commit:
        remember_revision(storage, plan.revision, plan.commit)
    return entry


def fetch_blob(blob: Path, etag: str, url: str, size: int | None, describe: str, on_bytes: BytesDone | None) -> None:
    """Download a file into `blob` through `<etag>.elite-partial`, checked against its ETag."""
    from filelock import FileLock

    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    lock = Path(str(partial) + ".lock")
    partial.parent.mkdir(parents=True, exist_ok=True)
    # Processes of one multi-GPU run may fetch the same file: one writes, the others wait for it.
    with FileLock(str(lock)):
        if blob.is_file():
            return
        kept = partial.stat().st_size if partial.exists() else 0
        append_until_complete(partial, url, size, on_bytes, describe)
        if not matches_etag(partial, etag):
            partial.unlink()
            sent = (f"{describe}, resumed from the {kept} bytes an earlier run kept, does not match" if kept else
                    f"the server at {origin_text(url)} sent {describe} with other content than")
            raise ModelError(f"{sent} its checksum (ETag {etag[:12]}...); elite did not keep it. Run the command "
                             "again to download it anew; if it says the same, the server (HF_ENDPOINT) serves a "
                             "damaged or altered file.")
        os.replace(partial, blob)
    # Whoever waits on this lock finds the blob and returns; a later run checks for the blob first.
    lock.unlink(missing_ok=True)


def origin_text(url: str) -> str:
    scheme, host, port = origin_of(url)
    return f"{scheme}://{host}:{port}"


def link_into_snapshot(storage: Path, commit: str, path: str, blob: Path) -> Path:
    """snapshots/<commit>/<path> -> ../../blobs/<etag> (a copy where links are not allowed)."""
    import shutil

    entry = storage / "snapshots" / commit / path
    entry.parent.mkdir(parents=True, exist_ok=True)
    staged = entry.with_name(f".{entry.name}.{os.getpid()}.elite-link")
    staged.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, entry.parent), staged)
    except OSError:
        shutil.copyfile(blob, staged)
    os.replace(staged, entry)
    if not in_storage(entry, storage):  # the names are checked before: this is the last line of defence
        entry.unlink()
        raise ModelError(f"'{entry}' would lead out of the Hugging Face cache; elite removed it.")
    return entry


def remember_revision(storage: Path, revision: str, commit: str) -> None:
    """refs/<revision>: the commit a branch or tag name stands for, as huggingface_hub records it."""
    ref = storage / "refs" / revision
    try:
        if ref.read_text().strip() == commit:
            return
    except OSError:
        pass
    ref.parent.mkdir(parents=True, exist_ok=True)
    staged = ref.with_name(f".{ref.name}.{os.getpid()}.elite-ref")
    staged.write_text(commit)
    os.replace(staged, ref)


def append_until_complete(partial: Path, url: str, size: int | None, on_bytes: BytesDone | None,
                          describe: str = "the file") -> None:
    """Append the bytes `partial` lacks, asking with `Range` from where it ends; a dropped or
    stalled connection (no bytes for HF_HUB_DOWNLOAD_TIMEOUT seconds) is asked again from the new
    end, until RETRIES_WITHOUT_PROGRESS tries in a row bring nothing. Raises ModelError saying
    what the server did (stalled, cut, sent too much), or the client's error when it never answered."""
    import time

    from huggingface_hub import get_session
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import hf_raise_for_status

    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:  # not this file's beginning: start again
        partial.write_bytes(b"")
        have = 0
    if on_bytes and have:
        on_bytes(have)
    fruitless, answered, problem = 0, False, ""
    while size is None or have < size:
        headers = request_headers(url)
        if have:
            headers["Range"] = f"bytes={have}-"
        before = have
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                      timeout=download_timeout()) as response:
                hf_raise_for_status(response)
                answered = True
                if have and response.status_code != 206:  # the server ignored Range: it sends the whole file
                    if on_bytes:
                        on_bytes(-have)
                    partial.write_bytes(b"")
                    have = before = 0
                with partial.open("ab") as handle:
                    for chunk in response.iter_bytes():
                        if size is not None and have + len(chunk) > size:
                            raise ModelError(f"the server at {origin_text(url)} sent more of {describe} than the "
                                             f"{size} bytes it announced; elite did not keep it. Check HF_ENDPOINT.")
                        handle.write(chunk)
                        have += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
            if size is None:
                return
            problem = "cut"  # the response ended before the file did
        except (HfHubHTTPError, ModelError):
            raise  # refused (401, 404, ...) or misbehaving: asking again would not help
        except Exception as error:  # the connection dropped, stalled or could not be made
            if not answered and have == before and fruitless + 1 >= RETRIES_WITHOUT_PROGRESS:
                if timed_out(error):  # said as "cannot be reached", naming this request's timeout
                    raise TransferNotAnswered(download_timeout()) from error
                raise  # never any answer (refused, no route): said as "cannot be reached"
            problem = "stalled" if timed_out(error) else "cut"
        fruitless = fruitless + 1 if have == before else 0
        if fruitless >= RETRIES_WITHOUT_PROGRESS:
            of = f"{have} of {size} bytes" if size is not None else f"{have} bytes"
            if problem == "stalled":
                what = (f"stopped sending {describe} at {of} (nothing for {download_timeout():g} s, "
                        f"HF_HUB_DOWNLOAD_TIMEOUT, {fruitless} tries in a row)")
            else:
                what = f"cut {describe} short at {of}, {fruitless} tries in a row"
            raise ModelError(f"the server at {origin_text(url)} {what}; run the command again to go on from there, "
                             "or set HF_ENDPOINT to another mirror.")
        if fruitless:
            time.sleep(0.5 * fruitless)


def fetch(plans: list[ModelPlan], on_file: FileStarted | None = None, on_bytes: BytesDone | None = None) -> None:
    """Download every file the plans lack into the Hugging Face cache, one at a time.

    Each file enters the cache once complete and checked, so after Ctrl-C the next call fetches only
    the rest. Raises ModelError (one sentence) when the Hub refuses, goes away or misbehaves.
    """
    for plan in plans:
        for item in plan.to_fetch:
            if on_file:
                on_file(plan, item)
            try:
                path = download_file(plan, item, on_bytes)
            except ModelError:
                raise
            except Exception as error:
                raise hub_error(plan, error) from None
            item.cached = True
            if plan.state != "folder":
                plan.location = Path(path).parents[item.path.count("/")] if not is_hub_file(plan.value) else Path(path)
        if plan.needs_fetch:
            plan.state = "cached"


def ensure_local(key: str, value: str, kind: str, prefer_fp16: bool = False) -> Path:
    """A local folder (or file, for an hf:// mapper) holding everything elite loads of a model
    setting: the setting itself, its cache snapshot, or what a download just fetched."""
    plan = local_plan(key, value, kind)
    if plan.state == "folder":
        return plan.location  # type: ignore[return-value]
    if plan.needs_fetch:
        fetch([hub_plan(plan, prefer_fp16)])
    assert plan.location is not None
    return plan.location


# ---- the mappers' converted copies -------------------------------------------------------------

def source_key(path: Path) -> str:
    """What names a downloaded mapper's content: its cache blob's name (the Hub's ETag: the sha256
    of an LFS file), or the sha256 of its bytes where the cache holds copies instead of links."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40,64}", real.name):
        return real.name
    digest = hashlib.sha256()
    with real.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_path(convert_dir: Path, role: str, source: Path) -> Path:
    """Where the safetensors form of a downloaded reference mapper is kept (keyed by its content)."""
    return convert_dir / f"{role}_mapper-{source_key(source)}.safetensors"


def cache_dir_from_environment() -> Path:
    """The Hugging Face cache folder as huggingface_hub's constants.py computes it, without
    importing huggingface_hub (which would cost `elite list` more than its own start-up)."""
    default_home = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
                                "huggingface")
    home = os.path.expandvars(os.path.expanduser(os.getenv("HF_HOME", default_home)))
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.getenv("HF_HUB_CACHE", legacy))))


def cached_hub_file(hub_file: HubFile) -> Path | None:
    """The cached copy of a hub file (the cache's refs/ and snapshots/ layout), or None."""
    storage = cache_dir_from_environment() / f"models--{hub_file.repo_id.replace('/', '--')}"
    commit = hub_file.revision
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        try:
            commit = (storage / "refs" / hub_file.revision).read_text().strip()
        except OSError:
            return None
    path = storage / "snapshots" / commit / hub_file.path
    return path if path.is_file() else None


def cached_converted_mapper(value: str, role: str, convert_dir: Path) -> Path | None:
    """The converted file of an hf:// mapper setting when both it and its source are here already;
    no network, no torch, no huggingface_hub (what `elite list` needs for its stale column)."""
    hub_file = parse_hub_file(value)
    source = cached_hub_file(hub_file) if hub_file else None
    if source is None:
        return None
    try:
        converted = converted_path(convert_dir, role, source)
    except OSError:
        return None
    return converted if converted.is_file() else None


def plans_for(settings: dict[str, str], encoding: bool = True) -> list[ModelPlan]:
    """Where each model setting stands, without network. encoding: the command encodes pictures
    (`elite add`, `reencode`), so it needs the image encoder's weights; `elite gen` needs only
    its config. A setting missing from `settings` (the segmenter, say) is left out."""
    kinds = {"base_model": "base_model", "image_encoder": "image_encoder" if encoding else "image_encoder_config",
             "global_mapper": "file", "local_mapper": "file",
             # Only when asked: the segmenter (CLIPSeg, model and processor files at the root) is
             # needed by `elite add` for pictures without a mask, and by `elite models download`.
             "segmenter": "transformers",
             # Only when a call or `models download --modes` asks: the models of gen's modes
             # (docs/modes.md). ControlNets and depth models keep config and weights at the root.
             "controlnet_canny": "transformers", "controlnet_depth": "transformers", "depth_model": "transformers",
             "inpaint_model": "unet"}
    return [local_plan(key, settings[key], kind) for key, kind in kinds.items() if settings.get(key)]


def prefers_fp16(device: str, dtype: str) -> bool:
    """Whether the weights will run in float16 (so the fp16 variant, where a repo has one, is the
    one to download): the --device/--dtype settings as the model loading resolves them."""
    if dtype in ("float16", "fp16"):
        return True
    if dtype not in ("auto", "", None) or device == "cpu":
        return False  # float32/bfloat16, or the CPU's automatic float32: no need to import torch
    from elite_cli.model.loading import resolve_device, resolve_dtype

    import torch

    return resolve_dtype(dtype, resolve_device(device)) == torch.float16


def missing_mode_downloads(values: dict[str, str], spec: Any) -> list[ModelPlan]:
    """What the models of img2img/inpainting/ControlNet calls ({setting: value}) lack in the cache."""
    missing = [plan for plan in plans_for(values) if plan.needs_fetch]
    if not missing:
        return []
    fp16 = prefers_fp16(spec.device, spec.dtype)
    return [hub_plan(plan, fp16) for plan in missing]


def missing_downloads(spec: Any, encoding: bool = True, segmenter: str | None = None) -> list[ModelPlan]:
    """What the models of `spec` (a ModelSpec) lack in the Hugging Face cache, as plans ready for
    `fetch` (empty, without any network, when everything is there). encoding: the caller encodes
    pictures and needs the image encoder's weights too; segmenter: it also finds objects with this
    segmenter (automatic masks)."""
    values = {"base_model": spec.base_model, "image_encoder": spec.image_encoder,
              "global_mapper": spec.global_mapper, "local_mapper": spec.local_mapper, "segmenter": segmenter or ""}
    missing = [plan for plan in plans_for(values, encoding) if plan.needs_fetch]
    if not missing:
        return []
    fp16 = prefers_fp16(spec.device, spec.dtype)
    return [hub_plan(plan, fp16) for plan in missing]
