"""`elite doctor` and `elite models`: what is installed and configured, and how to fix what is not.

Each check returns a `Finding` with a fix the user can type. Nothing here raises for a
problem it finds: a missing model is a finding, not an error.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from elite_cli.common.config import Resolved
from elite_cli.common.wording import counted

OK, WARN, FAIL = "ok", "warn", "fail"

# The file whose presence says a hub model is complete enough to load.
HUB_MARKER_FILES = {"base_model": "model_index.json", "image_encoder": "config.json", "segmenter": "config.json"}


@dataclass
class Finding:
    check: str
    status: str  # ok, warn or fail
    detail: str
    fix: str = ""


def package_version(name: str) -> str | None:
    """Installed version without importing the package (xformers imports torch and CUDA)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_presence(key: str, value: str) -> tuple[str, str]:
    """(status, detail) for one configured model: a local path, a hub model (cached or not), or neither."""
    from elite_cli.model.hub import is_hub_file, is_hub_id

    if is_hub_file(value) or key in HUB_MARKER_FILES and is_hub_id(value):
        return hub_presence(key, value)
    path = Path(value).expanduser()
    if key in ("global_mapper", "local_mapper"):
        if path.is_dir():
            return FAIL, f"{path} is a folder, not a mapper file"
        if path.is_file():
            from elite_cli.model.mapper_files import mapper_file_problem

            problem = mapper_file_problem(path, key.split("_")[0])
            return (FAIL, f"{path} {problem.what}") if problem else (OK, f"file {path}")
        return FAIL, f"missing file {path}"
    if path.is_file():
        return FAIL, f"{path} is a file, not a model folder"
    if path.exists():
        marker = HUB_MARKER_FILES[key]
        if (path / marker).is_file():
            return OK, f"folder {path}"
        return FAIL, f"folder {path} has no {marker}"
    return FAIL, f"'{value}' is neither a folder nor a hub id"


def hub_presence(key: str, value: str) -> tuple[str, str]:
    """A hub model or hf:// file: cached (its size), partly cached, or to download; without network."""
    from elite_cli.errors import InputError
    from elite_cli.model.hub import cache_dir, local_plan, offline

    try:
        # What elite loads of each: the segmenter is a transformers model with its processor files.
        kind = {"image_encoder": "image_encoder", "base_model": "base_model", "segmenter": "transformers"}.get(key, "file")
        plan = local_plan(key, value, kind)
    except InputError as error:
        return FAIL, str(error).rstrip(".")
    if plan.state == "cached":
        return OK, f"{value}: cached ({human_size(plan.cached_bytes)} in {cache_dir()})"
    # What each command fetches of it on first use.
    users = "`elite add` and `elite gen` download it" if key != "image_encoder" else \
        "`elite add` downloads it (`elite gen` only its config)"
    if plan.state == "partial":
        more = f" and {len(plan.lacking) - 1} more" if len(plan.lacking) > 1 else ""
        what = f"{value}: partly cached, lacks {plan.lacking[0]}{more}; {users.replace(' it', ' the rest')}"
    else:
        what = f"{value}: not downloaded yet; {users} from the Hub on first use"
    if offline():
        return FAIL, f"{value}: not (completely) in the Hugging Face cache and HF_HUB_OFFLINE is set"
    return WARN, what


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


MODEL_FIXES = {
    "base_model": "pass --base-model or set ELITE_BASE_MODEL to a Stable Diffusion 1.x folder or hub id",
    "image_encoder": "pass --image-encoder or set ELITE_IMAGE_ENCODER to a CLIP ViT-L/14 folder or hub id",
    "global_mapper": "`elite config unset global_mapper` for the ELITE file on the Hub, or "
                     "`elite models import global_mapper.pt local_mapper.pt` for downloaded ones",
    "local_mapper": "`elite config unset local_mapper` for the ELITE file on the Hub, or "
                    "`elite models import global_mapper.pt local_mapper.pt` for downloaded ones",
    "segmenter": "set ELITE_SEGMENTER (or `elite config set segmenter`) to a CLIPSeg folder or hub id",
}
HUB_FIXES = {
    WARN: "none needed with internet; `elite models download` fetches it now (to work offline later)",
    FAIL: "unset HF_HUB_OFFLINE and run `elite models download`, or copy a Hugging Face cache that has it "
          "(HF_HOME / HF_HUB_CACHE), or point the setting at a local folder or file; or try elite offline with "
          "`elite models tiny ./tiny --use`",
}
# Where a model is missing, the offline route: random tiny models that run every command.
TRY_OFFLINE = "; or try elite offline with `elite models tiny ./tiny --use`"


def model_findings(settings: dict[str, Resolved]) -> list[Finding]:
    from elite_cli.model.hub import is_hub_file, is_hub_id

    findings = []
    for key in ("base_model", "image_encoder", "global_mapper", "local_mapper", "segmenter"):
        value = settings[key].value
        status, detail = model_presence(key, value)
        from_hub = is_hub_file(value) or key in HUB_MARKER_FILES and is_hub_id(value)
        if status == OK:
            fix = ""
        elif from_hub and (status == WARN or "HF_HUB_OFFLINE" in detail):
            fix = HUB_FIXES[status]
        else:
            fix = MODEL_FIXES[key] + TRY_OFFLINE
        findings.append(Finding(key, status, f"{detail} [{settings[key].source}]", fix))
    return findings


def environment_findings(device: str, dtype: str = "auto") -> list[Finding]:
    """Python, torch, CUDA, xformers, the device the configured setting resolves to and the
    precision the models will compute in there."""
    findings = [Finding("python", OK if sys.version_info >= (3, 11) else FAIL, platform.python_version(), "")]
    if sys.version_info < (3, 11):
        findings[0].fix = "install Python 3.11 or newer"
    try:
        import torch
    except ImportError:
        return findings + [Finding("torch", FAIL, "not installed", "pip install torch (a CUDA build for GPUs)")]
    cuda_build = torch.version.cuda
    findings.append(Finding("torch", OK, f"{torch.__version__} ({'CUDA ' + cuda_build if cuda_build else 'CPU build'})"))
    for name in ("diffusers", "transformers"):
        version = package_version(name)
        findings.append(Finding(name, OK if version else FAIL, version or "not installed", "" if version else f"pip install {name}"))
    cuda = torch.cuda.is_available()
    if cuda:
        findings.append(Finding("cuda", OK, f"{torch.cuda.get_device_name(0)}, CUDA {cuda_build}"))
    else:
        fix = "install a CUDA build of torch from pytorch.org to use an NVIDIA GPU" if not cuda_build else "check the NVIDIA driver (nvidia-smi)"
        findings.append(Finding("cuda", WARN if device != "cuda" else FAIL, "not available", fix))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    xformers = package_version("xformers")
    findings.append(
        Finding(
            "xformers",
            OK if xformers or not cuda else WARN,
            xformers or "not installed",
            "" if xformers or not cuda else "pip install -e '.[cuda]' for faster, leaner attention on CUDA",
        )
    )
    resolved = device
    if device == "auto":
        resolved = "cuda" if cuda else "mps" if mps else "cpu"
    unavailable = (resolved == "cuda" and not cuda) or (resolved == "mps" and not mps)
    findings.append(
        Finding(
            "device",
            FAIL if unavailable else OK,
            f"{resolved} (setting: {device})",
            "use --device cpu or install the matching torch build" if unavailable else "",
        )
    )
    findings.append(precision_finding(resolved, dtype))
    return findings


def precision_finding(device: str, dtype: str) -> Finding:
    """The dtype `--dtype` resolves to on the device, and why (elite_cli/model/precision.py)."""
    import torch

    from elite_cli.errors import InputError
    from elite_cli.model.precision import choose_dtype

    try:
        choice = choose_dtype(dtype, torch.device(device))
    except (InputError, RuntimeError) as error:
        return Finding("dtype", FAIL, str(error).rstrip("."), "use --dtype auto (or set ELITE_DTYPE=auto)")
    return Finding("dtype", OK, choice.line())


def library_findings(library: Path, open_store: Callable[[], Any]) -> list[Finding]:
    """The library folder and its health (`ConceptStore.check`)."""
    if not library.exists():
        return [Finding("library", OK, f"{library} (created on first `elite add`)")]
    try:
        problems = open_store().check().problems
    except Exception as error:  # report, don't crash: doctor runs when things are broken
        return [Finding("library", FAIL, f"{library}: {error}", "run `elite check --repair`, or move the folder away")]
    if problems:
        first = problems[0]
        return [
            Finding(
                "library",
                FAIL,
                f"{library}: {counted(len(problems), 'problem')}, e.g. {first}",
                "run `elite check --repair`",
            )
        ]
    return [Finding("library", OK, str(library))]
