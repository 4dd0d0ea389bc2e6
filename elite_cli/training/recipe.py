"""Everything that defines a training run, with the reference recipe's defaults (ELITE_SPEC.md section 7).

Pure Python: the CLI builds a TrainConfig without importing torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

from elite_cli.errors import InputError

# The same defaults as elite_cli.model.loading, repeated because that module imports torch.
DEFAULT_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"

# Per-stage reference settings (train_global.sh / train_local.sh and the two training scripts).
STAGE_DEFAULTS = {
    "global": {"batch_size": 4, "learning_rate": 1e-6, "regularization": 0.01},
    "local": {"batch_size": 2, "learning_rate": 1e-5, "regularization": 1e-4},
}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION = ("auto", "sdpa", "xformers")
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    stage: str  # "global" or "local"
    data: str
    output: str
    base_model: str = DEFAULT_BASE_MODEL
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    global_mapper: str = ""  # local stage: the trained (frozen) global mapper
    init: str = ""  # optional starting weights of the mapper being trained
    resolution: int = 512
    batch_size: int | None = None  # per process; None = the stage's reference value
    gradient_accumulation: int = 4
    learning_rate: float | None = None  # before scaling; None = the stage's reference value
    scale_lr: bool = True  # multiply by batch_size * gradient_accumulation * processes, as the reference
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    regularization: float | None = None  # word (global) or local-value (local) L1 weight
    max_steps: int = 200_000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 0  # 0 keeps every checkpoint
    validate_every: int = 0  # 0 = no validation images
    validation_count: int = 2
    validation_prompt: str = "a photo of a <concept>"
    validation_steps: int = 25
    seed: int = 0
    mixed_precision: str | None = None  # None: whatever `accelerate config` / `accelerate launch` set
    gradient_checkpointing: bool = False
    hidden_width: int = 1024
    attention: str = "auto"
    num_workers: int = 2
    tensorboard: bool = False
    resume: str = ""  # a checkpoint folder, or "latest" (newest in output)
    device: str = "auto"  # "cpu" forces the CPU (tests); otherwise accelerate chooses

    def resolved(self) -> "TrainConfig":
        """The config with the stage defaults filled in, after checking every value."""
        if self.stage not in STAGE_DEFAULTS:
            raise InputError(f"the training stage must be 'global' or 'local' but is {self.stage!r}.")
        defaults = STAGE_DEFAULTS[self.stage]
        config = replace(self, **{key: value for key, value in defaults.items() if getattr(self, key) is None})
        config.check()
        return config

    def check(self) -> None:
        positive = ("resolution", "batch_size", "gradient_accumulation", "max_steps", "validation_steps", "hidden_width")
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1 but is {getattr(self, name)}.")
        for name in ("checkpoint_every", "validate_every", "keep_checkpoints", "lr_warmup_steps", "num_workers",
                     "validation_count"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be 0 or more but is {getattr(self, name)}.")
        if self.validate_every and not self.validation_count:
            raise InputError("--validation-count must be at least 1 with --validate-every; pass --validate-every 0 for no validation images.")
        if self.resolution % 8:
            raise InputError(f"--resolution must be a multiple of 8 but is {self.resolution}.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"--learning-rate must be a positive number but is {self.learning_rate}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise InputError(f"--lr-scheduler {self.lr_scheduler!r} is not supported; use one of {', '.join(LR_SCHEDULERS)}.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise InputError(f"--mixed-precision {self.mixed_precision!r} is not supported; use no, fp16 or bf16.")
        if self.attention not in ATTENTION:
            raise InputError(f"--attention {self.attention!r} is not supported; use auto, sdpa or xformers.")
        if self.stage == "local" and not self.global_mapper:
            raise InputError("the local stage needs the trained global mapper; pass --global-mapper PATH.")
        if "<concept>" not in self.validation_prompt:
            raise InputError("--validation-prompt must mention <concept>, e.g. 'a photo of a <concept>'.")

    def total_batch(self, num_processes: int) -> int:
        return self.batch_size * self.gradient_accumulation * num_processes

    def scaled_learning_rate(self, num_processes: int) -> float:
        return self.learning_rate * self.total_batch(num_processes) if self.scale_lr else self.learning_rate

    def recipe(self, num_processes: int) -> dict:
        """What a trained mapper records about how it was made (no paths of the user's files)."""
        keep = ("stage", "resolution", "batch_size", "gradient_accumulation", "learning_rate", "scale_lr",
                "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon",
                "max_grad_norm", "regularization", "seed", "mixed_precision", "gradient_checkpointing", "hidden_width")
        recipe = {key: getattr(self, key) for key in keep}
        recipe.update(recipe_version=RECIPE_VERSION, num_processes=num_processes,
                      total_batch=self.total_batch(num_processes),
                      effective_learning_rate=self.scaled_learning_rate(num_processes))
        return recipe

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})
