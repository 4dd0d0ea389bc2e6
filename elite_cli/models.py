"""Loading everything ELITE needs, once per process.

Sources: the Stable Diffusion 1.x base model (hub id or local diffusers folder) for UNet, VAE,
tokenizer and text encoder (the SD text encoder *is* the CLIP text tower the reference uses),
the CLIP vision tower (hub id or folder), and the two mapper checkpoints (reference `.pt` or
our `.safetensors`). Half precision on CUDA, float32 elsewhere unless asked otherwise.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from elite_cli.errors import InputError, ModelError

DEFAULT_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSpec:
    base_model: str = DEFAULT_BASE_MODEL
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    global_mapper: str = ""
    local_mapper: str = ""
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"  # auto | sdpa | xformers
    # Keep the big models in CPU memory and move each to the GPU only while it runs.
    low_vram: bool = False
    # torch.compile the UNet (with the ELITE processors; they trace without graph breaks).
    compile: bool = False


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
    if requested in ("auto", "", None):
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if requested not in DTYPES:
        raise InputError(f"--dtype {requested!r} is not supported; use auto, float32, float16 or bfloat16.")
    dtype = DTYPES[requested]
    if device.type == "cpu" and dtype == torch.float16:
        raise InputError("--dtype float16 is too slow and imprecise on the CPU; use float32 or bfloat16 there.")
    return dtype


@dataclass
class Models:
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
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
    _image_encoder: torch.nn.Module | None = field(default=None, repr=False)
    _mappings_on_device: bool = field(default=False, repr=False)

    def prepare_encoding(self) -> None:
        """Move both mappers' ten MLPs to the compute device, once, on the first encode.

        They wait in CPU memory until then (0.12 GB in fp16 at real size), so a process that only
        generates holds just the mappers' key/value layers on the GPU.
        """
        if not self._mappings_on_device:
            for mapper in (self.global_mapper, self.local_mapper):
                for module in mapper.mapping_modules():
                    module.to(self.device)
            self._mappings_on_device = True

    @property
    def image_encoder(self) -> torch.nn.Module:
        """The CLIP vision tower, loaded on first use.

        Only encoding needs it: a process that only generates never loads it, which keeps
        0.6 GB (fp16) of ViT-L/14 weights out of GPU memory during generation.
        """
        if self._image_encoder is None:
            resting = torch.device("cpu") if self.spec.low_vram else self.device
            self._image_encoder = load_image_encoder(self.spec.image_encoder, resting, self.dtype)
        return self._image_encoder

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


_CACHE: dict[ModelSpec, Models] = {}


def _disable_progress_bars() -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def load_pretrained(load, source: str, what: str, **kwargs):
    """Call a from_pretrained and turn every failure into one ModelError sentence.

    Folders and models already in the Hugging Face cache load without a network request; the
    hub is asked only for a model that is not cached, and not at all when it cannot be reached,
    where the hub client would print its retry warnings for about 20 seconds before failing.
    """
    local = Path(source).expanduser()
    if local.exists():
        source = str(local)
    elif source.startswith((".", "/", "~")) or os.sep in source and source.count("/") > 1:
        raise ModelError(f"{what} folder '{source}' does not exist; pass a diffusers/transformers folder or a hub id.")
    # Library chatter (progress bars, "some weights were not used", hub retries) is not for our users.
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _disable_progress_bars()
    try:
        try:
            return load(source, local_files_only=True, **kwargs)
        except (OSError, ValueError, EnvironmentError):
            if local.exists() or hub_unreachable():
                raise
        return load(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"could not load the {what} from '{source}' ({reason}); pass a local folder, or download the hub "
            "model once with network access so it is in the Hugging Face cache."
        ) from None


def hub_unreachable() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub's host name does not resolve (no network).

    Behind a proxy the local resolver may know nothing, so there the download is simply tried.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "huggingface.co", 443)
    except OSError:
        return True
    return False


def load_image_encoder(source: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPVisionModel

    image_encoder = load_pretrained(CLIPVisionModel.from_pretrained, source, "image encoder")
    return image_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def forget_models(spec: ModelSpec | None = None) -> None:
    """Drop loaded models from the per-process cache (every spec when None), so the next load_models reloads."""
    if spec is None:
        _CACHE.clear()
    else:
        _CACHE.pop(spec, None)


def load_models(spec: ModelSpec) -> Models:
    """Load (or return the already loaded) models for a spec. Raises ModelError / InputError."""
    if spec in _CACHE:
        return _CACHE[spec]
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

    from elite_cli.attention import cross_attention_modules, install_elite_processors, resolve_backend
    from elite_cli.mappers import GlobalMapper, LocalMapper, check_against_unet, fingerprint, load_mapper_state, module_key

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    backend = resolve_backend(spec.attention, device)
    if not spec.global_mapper or not spec.local_mapper:
        raise ModelError("no mapper checkpoints are configured; run `elite models import global_mapper.pt local_mapper.pt` or set ELITE_GLOBAL_MAPPER/ELITE_LOCAL_MAPPER, or try elite offline with `elite models tiny ./tiny --use`.")

    # Mappers first: they are small and the most likely to be wrong.
    global_state = load_mapper_state(spec.global_mapper, "global mapper", role="global")
    local_state = load_mapper_state(spec.local_mapper, "local mapper", role="local")
    global_mapper = GlobalMapper.from_state_dict(global_state, f"global mapper '{spec.global_mapper}'")
    local_mapper = LocalMapper.from_state_dict(local_state, f"local mapper '{spec.local_mapper}'")

    base = spec.base_model
    tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, base, "base model tokenizer", subfolder="tokenizer")
    text_encoder = load_pretrained(CLIPTextModel.from_pretrained, base, "base model text encoder", subfolder="text_encoder")
    unet = load_pretrained(UNet2DConditionModel.from_pretrained, base, "base model UNet", subfolder="unet")
    vae = load_pretrained(AutoencoderKL.from_pretrained, base, "base model VAE", subfolder="vae")
    # Only the config now (the checks below need it); the weights load on first encode.
    image_encoder_config = load_pretrained(CLIPVisionConfig.from_pretrained, spec.image_encoder, "image encoder")

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

    # With low_vram the large models wait in CPU memory; the mappers (~200 MB in fp16) always
    # stay on the device because the UNet's processors use their key/value layers.
    resting = torch.device("cpu") if spec.low_vram else device
    for module in (text_encoder, unet, vae):
        module.to(device=resting, dtype=dtype).eval().requires_grad_(False)
    for module in (global_mapper, local_mapper):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        for mlp in module.mapping_modules():  # see Models.prepare_encoding
            mlp.to("cpu")
    install_elite_processors(unet, global_mapper, local_mapper, backend)
    if spec.compile:
        unet.compile()

    scheduler_config = {}
    try:
        from diffusers import LMSDiscreteScheduler

        scheduler_config = dict(LMSDiscreteScheduler.load_config(base, subfolder="scheduler"))
    except (OSError, ValueError, EnvironmentError):
        pass  # fall back to the reference's betas in the generator

    models = Models(
        spec=spec, device=device, dtype=dtype, backend=backend, tokenizer=tokenizer, text_encoder=text_encoder,
        unet=unet, vae=vae, image_encoder_config=image_encoder_config, global_mapper=global_mapper, local_mapper=local_mapper,
        global_fingerprint=fingerprint(global_state), local_fingerprint=fingerprint(local_state),
        scheduler_config=scheduler_config,
    )
    _CACHE[spec] = models
    return models
