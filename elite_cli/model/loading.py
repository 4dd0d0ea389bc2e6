"""Loading everything ELITE needs, once per process.

Sources: the Stable Diffusion 1.x base model (hub id or local diffusers folder) for UNet, VAE,
tokenizer and text encoder (the SD text encoder *is* the CLIP text tower the reference uses),
the CLIP vision tower (hub id or folder), and the two mapper checkpoints (reference `.pt` or
our `.safetensors`). Half precision on CUDA; on the CPU bfloat16 where the CPU computes it
natively, else float32 (elite_cli/model/precision.py), unless asked otherwise.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from elite_cli.errors import InputError, ModelError
from elite_cli.model.precision import DTYPES, DtypeChoice, choose_dtype, encoding_dtype  # noqa: F401  (DTYPES re-exported)
from elite_cli.model.spec import DEFAULT_BASE_MODEL, DEFAULT_IMAGE_ENCODER, ModelSpec  # noqa: F401  (re-exported)


def resolve_device(requested: str) -> torch.device:
    if requested in ("auto", "", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise InputError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this torch has no usable CUDA; install a CUDA build of torch or use --device cpu.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but MPS is not available here; use --device cpu.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {requested!r} is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The dtype the models compute in for `--dtype requested` (precision.choose_dtype says why)."""
    return choose_dtype(requested, device).dtype


@dataclass
class Models:
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype  # what the UNet, VAE, text encoder and the mappers' key/value layers compute in
    backend: str
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    # The CLIP vision tower's config, read at load time; its weights load on first use.
    image_encoder_config: object
    global_mapper: torch.nn.Module
    local_mapper: torch.nn.Module
    global_fingerprint: str
    local_fingerprint: str
    scheduler_config: dict = field(default_factory=dict)
    # Why `dtype` was chosen, in a few words (`elite doctor` and the start of `elite gen` say it).
    dtype_reason: str = ""
    # The mapper files the two mappers came from (their MLPs are read again on the first encode).
    mapper_files: tuple[str, str] = ("", "")
    _image_encoder: torch.nn.Module | None = field(default=None, repr=False)
    _mappings_on_device: bool = field(default=False, repr=False)

    def prepare_encoding(self) -> None:
        """Read both mappers' ten MLPs from their files onto the compute device, once, on the first encode.

        load_models keeps only the mappers' key/value layers (the MLPs are left on the meta device:
        0.23 GB in float32 at real size), so a process that only generates holds no more than
        plain diffusers plus those layers, in CPU memory as on the GPU.
        """
        if self._mappings_on_device:
            return
        from elite_cli.model.mappers import fingerprint, load_mapper_state, owned_copies

        recorded = (self.global_fingerprint, self.local_fingerprint)
        for role, mapper, path, expected in zip(("global", "local"), (self.global_mapper, self.local_mapper),
                                                self.mapper_files, recorded):
            state = load_mapper_state(path, f"{role} mapper", role=role)
            if fingerprint(state) != expected:
                raise ModelError(f"the {role} mapper file '{path}' changed since elite loaded it; run the command again.")
            mlps = owned_copies({name: tensor for name, tensor in state.items() if name.startswith("mapping_")},
                                lambda name: True, self.device, self.encoding_dtype)
            del state  # the file's mapping goes with it: the copies are all that is kept
            mapper.load_state_dict(mlps, strict=False, assign=True)
            for module in mapper.mapping_modules():
                module.requires_grad_(False)
        self._mappings_on_device = True

    @property
    def image_encoder(self) -> torch.nn.Module:
        """The CLIP vision tower, loaded on first use.

        Only encoding needs it: a process that only generates never loads it, which keeps
        0.6 GB (fp16) of ViT-L/14 weights out of GPU memory during generation.
        """
        if self._image_encoder is None:
            resting = torch.device("cpu") if self.spec.low_vram else self.device
            self._image_encoder = load_image_encoder(self.spec.image_encoder, resting, self.encoding_dtype)
        return self._image_encoder

    @property
    def encoding_dtype(self) -> torch.dtype:
        """What encoding computes in: float32 on the CPU whatever `dtype` is (precision.encoding_dtype)."""
        return encoding_dtype(self.dtype, self.device)

    @property
    def precision(self) -> DtypeChoice:
        return DtypeChoice(self.dtype, self.dtype_reason)

    @property
    def text_width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.image_encoder_config.image_size)

    @property
    def grid(self) -> int:
        config = self.image_encoder_config
        return int(config.image_size) // int(config.patch_size)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @contextmanager
    def using(self, *modules: torch.nn.Module):
        """Run a block with these modules on the compute device (a no-op unless low_vram)."""
        if not self.spec.low_vram:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def provenance(self) -> dict[str, str]:
        return {
            "global_mapper": self.global_fingerprint,
            "local_mapper": self.local_fingerprint,
            "base_model": self.spec.base_model,
            "image_encoder": self.spec.image_encoder,
        }


# Keyed by the spec and the dtype it resolved to: `--dtype auto` can mean another dtype once the
# CPU probe is replaced (tests stand for other CPUs that way).
_CACHE: dict[tuple[ModelSpec, torch.dtype], Models] = {}


def _disable_progress_bars() -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def load_pretrained(load, source: str, what: str, *, kind: str = "transformers", subfolder: str = "",
                    weights: bool = False, prefer_fp16: bool = False, **kwargs):
    """Call a from_pretrained on a complete local folder and turn every failure into one ModelError.

    `source` is a folder or a hub id. A hub id is found in the Hugging Face cache, or its missing
    files are downloaded first (`elite_cli.model.hub`): from_pretrained itself never goes to the network,
    so it cannot return a half-loaded model (transformers 5 gives an empty tokenizer rather than an
    error for a hub tokenizer that is not cached). kind: what elite loads of the model (see
    `hub.select_files`); weights: the call loads weights, so the variant chosen is passed on.
    """
    from elite_cli.model.folders import FOLDER_KINDS, check_model_folder
    from elite_cli.model.hub import ensure_local, is_hub_id, weights_variant

    local = Path(source).expanduser()
    if not local.exists() and not is_hub_id(source):
        raise ModelError(f"{what} folder '{source}' does not exist; pass a diffusers/transformers folder or a hub id.")
    # Library chatter (progress bars, "some weights were not used", hub retries) is not for our users.
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _disable_progress_bars()
    setting = setting_of(what, kind)
    folder = local if local.exists() else ensure_local(setting, source, kind, prefer_fp16)
    # A file of a downloaded model that does not load was damaged on the way or on disk.
    downloaded = "" if local.exists() else DAMAGED_DOWNLOAD_HINT
    if setting in FOLDER_KINDS:  # the config says what the folder is before any weights load
        check_model_folder(folder, FOLDER_KINDS[setting], source, downloaded)
    target = folder / subfolder if subfolder else folder
    if weights:
        variant = weights_variant(target, prefer_fp16)
        if variant:
            kwargs["variant"] = variant
    try:
        loaded = load(str(target), local_files_only=True, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ModelError(f"could not load the {what} from '{target}' ({reason}){downloaded}; pass a complete "
                         "diffusers/transformers folder or a hub id.") from None
    check_tokenizer(loaded, what, target, downloaded)
    return loaded


# Said when a model from the Hugging Face cache does not load: its files are checked against the
# Hub's checksums when downloaded, so a damaged one changed on disk (or came from an older elite).
DAMAGED_DOWNLOAD_HINT = (" (a damaged download? `elite models download --force` checks the cached files and "
                         "fetches the damaged ones anew)")


def setting_of(what: str, kind: str) -> str:
    """The setting a load serves ("base model UNet" -> base_model), for the folder check and errors."""
    if kind == "base_model" or what.startswith("base model"):
        return "base_model"
    if kind.startswith("image_encoder") or what.startswith("image encoder"):
        return "image_encoder"
    if what.startswith("segmenter"):
        return "segmenter"
    if what.startswith("depth model"):
        return "depth_model"
    if what.endswith(" ControlNet"):  # "canny ControlNet" -> controlnet_canny
        return "controlnet_" + what.split()[0]
    return what


def check_tokenizer(loaded, what: str, where: Path, hint: str = "") -> None:
    """A tokenizer without its vocabulary loads without an error: refuse it here, by name."""
    if not hasattr(loaded, "model_max_length") or not hasattr(loaded, "__len__"):
        return
    if len(loaded) <= 2 or not 0 < int(min(loaded.model_max_length, 1 << 40)) < 100_000:
        raise ModelError(f"the {what} in '{where}' has no usable vocabulary ({len(loaded)} tokens, a "
                         f"{loaded.model_max_length}-token window): its vocab.json or merges.txt is missing or damaged{hint}.")


def load_image_encoder(source: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPVisionModel

    image_encoder = load_pretrained(CLIPVisionModel.from_pretrained, source, "image encoder", kind="image_encoder",
                                    weights=True, prefer_fp16=dtype == torch.float16, torch_dtype=dtype)
    return image_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def mapper_cache_dir(spec: ModelSpec) -> Path:
    """Where converted hf:// mappers go: the spec's folder, else the default library's models/hub."""
    if spec.mapper_cache:
        return Path(spec.mapper_cache)
    from elite_cli.common.config import HUB_MAPPERS_DIR, MODELS_DIR_NAME
    from elite_cli.common.paths import default_home

    return default_home() / MODELS_DIR_NAME / HUB_MAPPERS_DIR


def resolve_mapper(value: str, role: str, convert_dir: Path) -> str:
    """The local file of a mapper setting: the path itself, or for an hf:// file its safetensors
    form, converted once from the downloaded reference checkpoint (downloaded first if needed).

    The conversion copies the tensors bit-exactly, so the fingerprint is the one `elite models
    import` of the same file gives, and concepts do not depend on the route the weights took.
    """
    from elite_cli.model.hub import converted_path, ensure_local, is_hub_file

    if not is_hub_file(value):
        return value
    source = ensure_local(f"{role}_mapper", value, "file")
    converted = converted_path(convert_dir, role, source)
    if not converted.is_file():
        from elite_cli.model.mappers import convert_reference_checkpoint

        try:
            convert_reference_checkpoint(source, converted, role)
        except ModelError as error:
            raise ModelError(f"{str(error).rstrip('.')}{DAMAGED_DOWNLOAD_HINT}.") from None
    return str(converted)


def forget_models(spec: ModelSpec | None = None) -> None:
    """Drop loaded models from the per-process cache (every spec when None), so the next load_models reloads."""
    for key in list(_CACHE):
        if spec is None or key[0] == spec:
            del _CACHE[key]


def load_models(spec: ModelSpec) -> Models:
    """Load (or return the already loaded) models for a spec. Raises ModelError / InputError."""
    device = resolve_device(spec.device)
    choice = choose_dtype(spec.dtype, device)
    dtype = choice.dtype
    if (spec, dtype) in _CACHE:
        return _CACHE[(spec, dtype)]
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

    from elite_cli.model.attention import cross_attention_modules, install_elite_processors, resolve_backend
    from elite_cli.model.converting import load_converting
    from elite_cli.model.mappers import (KV_SUFFIXES, GlobalMapper, LocalMapper, check_against_unet, fingerprint,
                                         load_mapper_state, module_key, owned_copies)

    backend = resolve_backend(spec.attention, device, dtype, compiled=spec.compile)
    if not spec.global_mapper or not spec.local_mapper:
        raise ModelError("no mapper checkpoints are configured; run `elite config unset global_mapper` (and "
                         "local_mapper) for the ELITE files from the Hub, or `elite models import global_mapper.pt local_mapper.pt`, or try elite offline with `elite models tiny ./tiny --use`.")

    # Mappers first: they are small and the most likely to be wrong.
    convert_dir = mapper_cache_dir(spec)
    global_file = resolve_mapper(spec.global_mapper, "global", convert_dir)
    local_file = resolve_mapper(spec.local_mapper, "local", convert_dir)
    global_state = load_mapper_state(global_file, "global mapper", role="global")
    local_state = load_mapper_state(local_file, "local mapper", role="local")
    fingerprints = fingerprint(global_state), fingerprint(local_state)
    # Generation only needs the key/value layers, copied out of the files onto the compute device
    # (~80 MB in fp16; the UNet's processors use them). The ten MLPs (0.23 GB in float32 at real
    # size) stay on the meta device until the first encode reads them again from the file in the
    # encoding precision (Models.prepare_encoding).
    def is_key_value(name: str) -> bool:
        return name.endswith(KV_SUFFIXES)

    global_state = owned_copies(global_state, is_key_value, device, dtype)
    local_state = owned_copies(local_state, is_key_value, device, dtype)
    # The networks take those tensors as they are (share=True: no second copy).
    global_mapper = GlobalMapper.from_state_dict(global_state, f"global mapper '{spec.global_mapper}'", share=True)
    local_mapper = LocalMapper.from_state_dict(local_state, f"local mapper '{spec.local_mapper}'", share=True)
    del global_state, local_state

    base = spec.base_model
    fp16 = dtype == torch.float16
    tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, base, "base model tokenizer", kind="base_model",
                                subfolder="tokenizer")
    # Converted to `dtype` while loading, as diffusers' pipelines do (torch_dtype): a float32 copy of
    # the UNet beside its bfloat16 one would raise the peak memory by 3.4 GB at real size.
    text_encoder = load_pretrained(CLIPTextModel.from_pretrained, base, "base model text encoder", kind="base_model",
                                   subfolder="text_encoder", weights=True, prefer_fp16=fp16, torch_dtype=dtype)
    # The UNet is most of the weights: converted tensor by tensor, not beside its whole mapped file.
    unet = load_pretrained(partial(load_converting, UNet2DConditionModel), base, "base model UNet", kind="base_model",
                           subfolder="unet", weights=True, prefer_fp16=fp16, torch_dtype=dtype)
    vae = load_pretrained(AutoencoderKL.from_pretrained, base, "base model VAE", kind="base_model", subfolder="vae",
                          weights=True, prefer_fp16=fp16, torch_dtype=dtype)
    # Only the config now (the checks below need it); the weights load on first encode.
    image_encoder_config = load_pretrained(CLIPVisionConfig.from_pretrained, spec.image_encoder, "image encoder",
                                           kind="image_encoder_config")

    unet_kv = {module_key(name): tuple(module.to_k.weight.shape) for name, module in cross_attention_modules(unet).items()}
    check_against_unet(global_mapper, unet_kv, f"global mapper '{spec.global_mapper}'")
    check_against_unet(local_mapper, unet_kv, f"local mapper '{spec.local_mapper}'")
    text_width = int(text_encoder.config.hidden_size)
    vision_width = int(image_encoder_config.hidden_size)
    for mapper, label in ((global_mapper, "global"), (local_mapper, "local")):
        if mapper.text_width != text_width:
            raise ModelError(f"the {label} mapper makes {mapper.text_width}-wide words but the base model's text encoder is {text_width}-wide; use mappers trained for this base model.")
        if mapper.image_width != vision_width:
            raise ModelError(f"the {label} mapper reads {mapper.image_width}-wide image features but the image encoder gives {vision_width}; use the image encoder the mappers were trained with.")
    if int(image_encoder_config.num_hidden_layers) < 16:
        raise ModelError("the image encoder has fewer than 16 layers; ELITE reads hidden states 4, 8, 12 and 16 (use CLIP ViT-L/14).")

    # With low_vram the large models wait in CPU memory (the mappers' layers stay on the device).
    resting = torch.device("cpu") if spec.low_vram else device
    for module in (text_encoder, unet, vae):
        module.to(device=resting, dtype=dtype).eval().requires_grad_(False)
    install_elite_processors(unet, global_mapper, local_mapper, backend)
    if spec.compile:
        unet.compile()

    scheduler_config = {}
    try:
        from diffusers import LMSDiscreteScheduler

        scheduler_config = dict(load_pretrained(LMSDiscreteScheduler.load_config, base, "base model scheduler",
                                                kind="base_model", subfolder="scheduler"))
    except (ModelError, OSError, ValueError, EnvironmentError):
        pass  # fall back to the reference's betas in the generator

    models = Models(
        spec=spec, device=device, dtype=dtype, backend=backend, tokenizer=tokenizer, text_encoder=text_encoder,
        unet=unet, vae=vae, image_encoder_config=image_encoder_config, global_mapper=global_mapper, local_mapper=local_mapper,
        global_fingerprint=fingerprints[0], local_fingerprint=fingerprints[1],
        scheduler_config=scheduler_config, dtype_reason=choice.reason, mapper_files=(global_file, local_file),
    )
    _CACHE[(spec, dtype)] = models
    return models
