"""Which precision the models compute in, and why: what `--dtype auto` means on each device.

- CUDA and MPS: float16, as diffusers' GPU examples run Stable Diffusion.
- CPU: bfloat16 for the UNet, the VAE and the text encoder when the CPU computes bfloat16
  natively, float32 otherwise. Natively means an instruction that multiplies bfloat16 pairs and
  accumulates in float32, which oneDNN (the library behind torch's CPU convolutions and matmuls)
  uses for its bfloat16 kernels:
    x86: AVX512-BF16 (VDPBF16PS; AMD Zen 4 and later, Intel Cooper Lake) or AMX-BF16 (tile
         matmuls; Intel Sapphire Rapids and later);
    ARM: the BF16 extension (BFDOT/BFMMLA; Neoverse V1/N2 such as Graviton 3, Apple M2 and later).
  There the UNet step runs about twice as fast (1.9x measured at SD 1.4 size, benchmarks/README.md
  section 10). Without them oneDNN still accepts bfloat16 on any AVX512 CPU, but it converts every
  operand to float32 and back, which is slower than float32 itself: float32 stays the choice.
- Encoding a concept (CLIP vision tower, mappers, segmenter) stays float32 on the CPU whatever the
  generation precision (`encoding_dtype`): a concept must not depend on the machine that made it.

The probe asks torch what the CPU has: `torch.cpu.get_capabilities()` (cpuinfo, what torch's
inductor also reads to emit bfloat16 code), and whether this torch's oneDNN build has bfloat16
kernels at all (`torch.ops.mkldnn._is_mkldnn_bf16_supported`). `choose_dtype(..., features=...)`
takes the features instead, so the choice can be tested for any CPU on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from elite_cli.errors import InputError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The CPU features that make bfloat16 native (see the module docstring), with their usual names.
NATIVE_BFLOAT16 = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "ARM BF16", "sve_bf16": "ARM SVE-BF16"}
# What `cpu_features` adds to cpuinfo's list: whether torch's oneDNN has bfloat16 kernels.
ONEDNN_BFLOAT16 = "onednn_bf16"

CpuFeatures = Mapping[str, object]


def cpu_features() -> CpuFeatures:
    """This CPU's features as torch detects them, plus ONEDNN_BFLOAT16."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        features = dict(get_capabilities())
    else:  # torch before 2.8: only the x86 checks exist
        import platform

        features = {"architecture": platform.machine(),
                    "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
                    "amx_bf16": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())}
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    features[ONEDNN_BFLOAT16] = onednn
    return features


# The probe load_models and doctor ask; tests replace it to stand for another CPU.
cpu_features_probe: Callable[[], CpuFeatures] = cpu_features


@dataclass(frozen=True)
class DtypeChoice:
    """The precision the models compute in, and the reason in a few words (doctor and gen print it)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def line(self) -> str:
        """One line for a person: 'bfloat16 (auto: ...)'."""
        return f"{self.name} ({self.reason})"


def native_bfloat16(features: CpuFeatures) -> str | None:
    """The name of the feature that makes bfloat16 native on this CPU, or None."""
    if not features.get(ONEDNN_BFLOAT16, False):
        return None
    for key, label in NATIVE_BFLOAT16.items():
        if features.get(key, False):
            return label
    return None


def choose_dtype(requested: str | None, device: torch.device, features: CpuFeatures | None = None) -> DtypeChoice:
    """The dtype for `--dtype requested` on `device`. features: the CPU's (default: the probe's);
    only read for auto on the CPU. Raises InputError for a dtype elite does not run."""
    if requested in ("auto", "", None):
        if device.type in ("cuda", "mps"):
            return DtypeChoice(torch.float16, f"auto: float16 on {device.type.upper()}")
        native = native_bfloat16(features if features is not None else cpu_features_probe())
        if native:
            return DtypeChoice(torch.bfloat16, f"auto: this CPU computes bfloat16 natively ({native}); "
                                               "--dtype float32 for full precision")
        return DtypeChoice(torch.float32, "auto: this CPU has no native bfloat16 (AVX512-BF16, AMX-BF16 or "
                                          "ARM BF16), where bfloat16 would be slower")
    if requested not in DTYPES:
        raise InputError(f"--dtype {requested!r} is not supported; use auto, float32, float16 or bfloat16.")
    dtype = DTYPES[requested]
    if device.type == "cpu" and dtype == torch.float16:
        raise InputError("--dtype float16 is too slow and imprecise on the CPU; use float32 or bfloat16 there.")
    return DtypeChoice(dtype, f"--dtype {requested}")


def encoding_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The precision of encoding (vision tower, mappers' MLPs, segmenter): float32 on the CPU, so
    that `elite add` stores the same concept whatever precision generation runs in there; the
    generation dtype elsewhere. The encoder pass is small next to one image's 50 UNet steps."""
    return torch.float32 if device.type == "cpu" else dtype
