"""The training loop of both stages, on Hugging Face accelerate.

The same code runs as a plain process (`elite train global ...`) and under
`accelerate launch` (any number of GPUs and machines): accelerate decides the device, the
process group and, unless --mixed-precision says otherwise, the precision.

One optimizer step = `gradient_accumulation` micro-batches per process; gradients are
synchronised across processes only on the last one. Everything random in a step (which
samples, their augmentation, latents, noise, timesteps) is drawn from generators seeded by
(seed, micro-step, row of the global batch), so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have (accelerate's own RNG snapshot is saved too, for anything else).

Files in the output folder:
  {stage}_mapper.safetensors            the final mapper, loadable by `elite add` / `elite gen`
  checkpoint-NNNNNN/{stage}_mapper.safetensors   the mapper at step N (same format)
  checkpoint-NNNNNN/state/              optimizer, scheduler, scaler, RNG (accelerate save_state)
  checkpoint-NNNNNN/trainer_state.json  step and the run's config (what --resume reads)
  validation/step-NNNNNN.png            rows of [picture | generated] every --validate-every steps
  log.jsonl                             one line per step: loss, mse, regularization, lr, ...
  skipped.txt                           samples left out when the data was scanned, with the reason
  skipped-process{i}.txt                samples that failed to load during training (process i)
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from elite_cli import __version__
from elite_cli.errors import InputError
from elite_cli.training.recipe import TrainConfig
from elite_cli.common.wording import counted

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
MAPPER_FORMAT = "elite-mapper"


@dataclass
class RunStarted:
    samples: int
    skipped_at_scan: int
    num_processes: int
    total_batch: int
    learning_rate: float
    start_step: int
    max_steps: int
    device: str
    mixed_precision: str
    resume_found_nothing: bool = False  # --resume latest in an output folder without checkpoints


@dataclass
class StepDone:
    step: int
    max_steps: int
    loss: float
    mse: float
    regularization: float
    lr: float
    skipped: int  # samples skipped while loading so far (all processes)
    images_per_second: float
    checkpoint: str | None = None
    validation: str | None = None


@dataclass
class TrainResult:
    mapper: Path
    steps: int
    last_loss: float
    losses: list[float] = field(default_factory=list)
    is_main_process: bool = True  # under accelerate launch, only one process should report


Progress = Callable[[object], None]


RESUME_MUST_MATCH = ("stage", "base_model", "image_encoder", "global_mapper", "hidden_width", "resolution",
                     "batch_size", "gradient_accumulation", "seed", "learning_rate", "scale_lr", "lr_scheduler",
                     "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon",
                     "max_grad_norm", "regularization")


def same_setting(before, now) -> bool:
    """Equal values; model and mapper paths also when they name the same file from another folder."""
    if before == now:
        return True
    if isinstance(before, str) and isinstance(now, str) and before and now:
        try:
            return Path(before).exists() and Path(before).resolve() == Path(now).resolve()
        except OSError:
            return False
    return False


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / f"checkpoint-{step:06d}"


def find_checkpoint(output: Path, resume: str) -> Path | None:
    """The checkpoint folder --resume names; None for "latest" when there is none yet."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise InputError(f"--resume '{resume}' is not a checkpoint folder (no {STATE_FILE}); pass a checkpoint-NNNNNN folder or 'latest'.")
        return path
    found = sorted((int(m.group(1)), p) for p in output.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name))
                   and (p / STATE_FILE).is_file())
    return found[-1][1] if found else None


# What a run leaves in its output folder; a new run (no --resume) refuses to mix with them.
RUN_FILES = ("global_mapper.safetensors", "local_mapper.safetensors", "log.jsonl")


def check_output(output: Path, resume: str) -> None:
    """--output must be a folder; one holding an earlier run is only continued (--resume), never overwritten."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output '{output}' is a file; pass a folder for the checkpoints, logs and trained mapper.")
    if resume or not output.is_dir():
        return
    earlier = sorted(p.name for p in output.iterdir() if p.name in RUN_FILES or CHECKPOINT_PATTERN.match(p.name))
    if earlier:
        raise InputError(
            f"--output '{output}' already holds a training run ({', '.join(earlier[:3])}); continue it with "
            f"--resume latest, or pick a new --output folder."
        )


def check_mapper_files(config: TrainConfig) -> None:
    """--init and --global-mapper name existing files (checked before any model loads)."""
    given = [("--init", config.init)]
    if config.stage == "local":
        given.append(("--global-mapper", config.global_mapper))
    for flag, path in given:
        if path and not Path(path).is_file():
            raise InputError(
                f"{flag} '{path}' is not a file; pass a mapper .safetensors (e.g. runs/global/global_mapper.safetensors "
                f"written by `elite train global`) or a reference .pt."
            )


def row_generators(seed: int, micro_step: int, first_row: int, rows: int) -> list[torch.Generator]:
    """CPU generators for rows first_row.. of the global micro-batch `micro_step`."""
    generators = []
    for row in range(first_row, first_row + rows):
        state = np.random.SeedSequence([seed, micro_step, row]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1))
    return generators


def mapper_metadata(config: TrainConfig, state: dict, step: int, num_processes: int) -> dict[str, str]:
    from elite_cli.model.mappers import fingerprint

    return {
        "format": MAPPER_FORMAT,
        "fingerprint": fingerprint(state),
        "mapper": config.stage,
        "base_model": config.base_model,
        "image_encoder": config.image_encoder,
        "global_mapper": config.global_mapper if config.stage == "local" else "",
        "recipe": json.dumps(config.recipe(num_processes), sort_keys=True),
        "step": str(step),
        "elite_version": __version__,
    }


class Trainer:
    """One run. `Trainer(config, progress).run()`; progress events reach only the main process."""

    def __init__(self, config: TrainConfig, progress: Progress | None = None, frozen=None):
        """`frozen`: already built FrozenModels to use instead of loading config.base_model /
        config.image_encoder (the benchmark builds real-size models from configs in memory)."""
        self.config = config.resolved()
        self.progress = progress
        self.given_frozen = frozen
        self.output = Path(self.config.output)

    # ---- set-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration
        from diffusers.optimization import get_scheduler

        from elite_cli.model.attention import install_elite_processors, resolve_backend
        from elite_cli.training.components import load_frozen_models, load_mapper, new_mapper
        from elite_cli.training.data import load_samples
        from elite_cli.training.objectives import GlobalObjective, LocalObjective

        config = self.config
        check_output(self.output, config.resume)
        check_mapper_files(config)
        found = load_samples(config.data, need_masks=config.stage == "local")  # the cheapest thing to get wrong
        self.samples, self.skipped_at_scan = found.samples, found.skipped
        tensorboard = False
        if config.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise InputError("--tensorboard needs the tensorboard package; `pip install tensorboard` or drop the flag.") from None
            tensorboard = True
        self.accelerator = accelerator = Accelerator(
            mixed_precision=config.mixed_precision, cpu=config.device == "cpu",
            log_with="tensorboard" if tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.output), logging_dir=str(self.output / "logs")),
        )
        self.is_main = accelerator.is_main_process
        # The precision really used (None meant "what accelerate config says"), so that the
        # mapper's recorded recipe says it.
        self.config = config = replace(config, mixed_precision=accelerator.mixed_precision)
        self.device = accelerator.device
        self.resume_from = self.check_resume()  # before the models load: a refused --resume costs nothing
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

        frozen = self.frozen = (self.given_frozen if self.given_frozen is not None
                                else load_frozen_models(config.base_model, config.image_encoder))

        torch.manual_seed(config.seed)  # the same fresh mapper on every process
        if config.init:
            mapper = load_mapper(config.stage, config.init, frozen, "--init mapper")
        else:
            mapper = new_mapper(config.stage, frozen, config.hidden_width)
        self.global_mapper = None
        if config.stage == "local":
            self.global_mapper = load_mapper("global", config.global_mapper, frozen, "global mapper")
            self.global_mapper.to(self.device, self.weight_dtype).eval().requires_grad_(False)
        mapper.requires_grad_(True).train()

        for module in (frozen.text_encoder, frozen.unet, frozen.vae, frozen.image_encoder):
            module.to(self.device, self.weight_dtype)
        mapper.to(self.device)
        self.backend = resolve_backend(config.attention, self.device)
        if config.stage == "global":
            # No local tokens are injected in this stage; the local slots get the global mapper's
            # layers only because every ELITE processor needs four projections.
            install_elite_processors(frozen.unet, mapper, mapper, self.backend)
        else:
            install_elite_processors(frozen.unet, self.global_mapper, mapper, self.backend)
        if config.gradient_checkpointing:
            frozen.unet.enable_gradient_checkpointing()
            if config.stage == "global":  # the words' gradients flow back through the text encoder
                frozen.text_encoder.gradient_checkpointing_enable()
                frozen.text_encoder.train()  # transformers checkpoints only in train mode (CLIP has no dropout)

        num_processes = accelerator.num_processes
        self.learning_rate = config.scaled_learning_rate(num_processes)
        optimizer = torch.optim.AdamW(
            mapper.parameters(), lr=self.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
        )
        # Stepped once per optimizer step, and kept out of accelerator.prepare, which would step
        # it once per process.
        self.lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=config.max_steps)
        self.mapper, self.optimizer = accelerator.prepare(mapper, optimizer)
        accelerator.register_for_checkpointing(self.lr_scheduler)
        self.raw_mapper = accelerator.unwrap_model(self.mapper)

        if config.stage == "global":
            self.objective = GlobalObjective(frozen, self.mapper, config.regularization, self.weight_dtype, self.device)
        else:
            self.objective = LocalObjective(frozen, self.mapper, self.global_mapper, config.regularization,
                                            self.weight_dtype, self.device)
        if tensorboard:
            accelerator.init_trackers("elite", config={k: v for k, v in config.recipe(num_processes).items() if v is not None})

    def check_resume(self) -> tuple[Path, int] | None:
        """--resume's checkpoint and step, after checking that this run can continue it (None: a fresh start)."""
        config = self.config
        if not config.resume:
            return None
        checkpoint = find_checkpoint(self.output, config.resume)
        if checkpoint is None:
            return None
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        before = TrainConfig.from_json(json.dumps(saved["config"]))
        # A resumed run continues exactly where it stopped only with the same models, data
        # layout (which samples and noise each step draws) and optimizer recipe; --max-steps,
        # logging, checkpointing and precision may change.
        for name in RESUME_MUST_MATCH:
            if not same_setting(getattr(before, name), getattr(config, name)):
                raise InputError(
                    f"--resume '{checkpoint}' was made with --{name.replace('_', '-')} {getattr(before, name)!r} "
                    f"but this run has {getattr(config, name)!r}; resume with the same settings, or start a new "
                    f"run from its weights with --init {checkpoint / (config.stage + '_mapper.safetensors')}."
                )
        saved_processes = saved.get("num_processes", self.accelerator.num_processes)
        if saved_processes != self.accelerator.num_processes:
            raise InputError(
                f"--resume '{checkpoint}' was made by {counted(saved_processes, 'process', 'processes')} but this run has "
                f"{self.accelerator.num_processes}; each step's samples depend on it, so resume with "
                f"{saved_processes}, or start a new run from its weights with --init."
            )
        step = int(saved["step"])
        if step >= config.max_steps:
            raise InputError(
                f"--resume '{checkpoint}' is already at step {step} and --max-steps is {config.max_steps}; "
                f"pass a larger --max-steps to train on."
            )
        return checkpoint, step

    def restore(self) -> int:
        """Load --resume's checkpoint (checked in setup); return the step it was taken at (0 without one)."""
        if self.resume_from is None:
            return 0
        checkpoint, step = self.resume_from
        self.accelerator.load_state(str(checkpoint / "state"))
        return step

    def loader(self, start_step: int):
        from torch.utils.data import DataLoader

        from elite_cli.training.data import EpochBatches, TrainingExamples, collate

        config, frozen, accelerator = self.config, self.frozen, self.accelerator
        examples = TrainingExamples(self.samples, config.stage, frozen.tokenizer, config.resolution, frozen.clip_size,
                                    frozen.latent_factor, config.seed)
        batches = EpochBatches(len(examples), config.batch_size, accelerator.num_processes, accelerator.process_index,
                               config.seed, start=start_step * config.gradient_accumulation)
        return DataLoader(examples, batch_sampler=batches, collate_fn=collate, num_workers=config.num_workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.setup()
        config, accelerator = self.config, self.accelerator
        start_step = self.restore()
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            if self.skipped_at_scan:
                with (self.output / "skipped.txt").open("a", encoding="utf-8") as handle:
                    handle.writelines(f"{what}: {why}\n" for what, why in self.skipped_at_scan)
        self.emit(RunStarted(
            samples=len(self.samples), skipped_at_scan=len(self.skipped_at_scan), num_processes=accelerator.num_processes,
            total_batch=config.total_batch(accelerator.num_processes), learning_rate=self.learning_rate,
            start_step=start_step, max_steps=config.max_steps, device=str(self.device),
            mixed_precision=accelerator.mixed_precision,
            resume_found_nothing=bool(config.resume) and start_step == 0,
        ))
        batches = iter(self.loader(start_step))
        losses: list[float] = []
        skipped_total = 0
        step = start_step
        self.mapper.train()
        while step < config.max_steps:
            started = time.perf_counter()
            totals = torch.zeros(4, device=self.device)  # loss, mse, regularization, skipped
            for micro in range(config.gradient_accumulation):
                micro_step = step * config.gradient_accumulation + micro
                batch = next(batches)
                if batch["skipped"]:
                    self.note_skipped(batch["skipped"])
                last = micro == config.gradient_accumulation - 1
                with nullcontext() if last else accelerator.no_sync(self.mapper):
                    with accelerator.autocast():
                        rows = row_generators(config.seed, micro_step, accelerator.process_index * config.batch_size,
                                              len(batch["position"]))
                        terms = self.objective(batch, rows)
                    accelerator.backward(terms.loss / config.gradient_accumulation)
                totals += torch.stack([terms.loss.detach().float(), terms.mse.float(), terms.regularization.float(),
                                       torch.tensor(float(len(batch["skipped"])), device=self.device)])
            accelerator.clip_grad_norm_(self.mapper.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1

            totals[:3] /= config.gradient_accumulation
            totals = accelerator.reduce(totals, reduction="sum")
            loss, mse, regularization = (float(v) / accelerator.num_processes for v in totals[:3])
            skipped_total += int(totals[3])
            if not math.isfinite(loss):
                raise InputError(f"the loss became {loss} at step {step}; lower --learning-rate or use --mixed-precision bf16.")
            losses.append(loss)
            elapsed = time.perf_counter() - started
            report = StepDone(step, config.max_steps, loss, mse, regularization, self.lr_scheduler.get_last_lr()[0],
                              skipped_total, config.total_batch(accelerator.num_processes) / max(elapsed, 1e-9))
            if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.max_steps):
                report.checkpoint = str(self.save_checkpoint(step))
            if config.validate_every and step % config.validate_every == 0:
                report.validation = self.validate(step)
            self.log(report)
            self.emit(report)

        final = self.output / f"{config.stage}_mapper.safetensors"
        if self.is_main:
            self.save_mapper(final, step)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return TrainResult(final, step, losses[-1] if losses else float("nan"), losses, self.is_main)

    # ---- side effects ------------------------------------------------------------------------
    def emit(self, event) -> None:
        if self.is_main and self.progress is not None:
            self.progress(event)

    def log(self, report: StepDone) -> None:
        values = {"loss": report.loss, "mse": report.mse, "regularization": report.regularization, "lr": report.lr,
                  "skipped": report.skipped, "images_per_second": report.images_per_second}
        if self.config.tensorboard:
            self.accelerator.log(values, step=report.step)
        if self.is_main:
            with (self.output / "log.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": report.step, **values}) + "\n")

    def note_skipped(self, reasons: list[str]) -> None:
        path = self.output / f"skipped-process{self.accelerator.process_index}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.writelines(reason + "\n" for reason in reasons)

    def mapper_state(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().float().cpu().contiguous() for name, tensor in self.raw_mapper.state_dict().items()}

    def save_mapper(self, path: Path, step: int) -> None:
        from elite_cli.model.mappers import save_mapper_state

        state = self.mapper_state()
        save_mapper_state(state, path, mapper_metadata(self.config, state, step, self.accelerator.num_processes))

    def save_checkpoint(self, step: int) -> Path:
        folder = checkpoint_dir(self.output, step)
        accelerator = self.accelerator
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            self.save_mapper(folder / f"{self.config.stage}_mapper.safetensors", step)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(folder / "state"))
        if self.is_main:
            # Written last: a folder without it is an interrupted save and is never resumed from.
            state = {"step": step, "config": json.loads(self.config.to_json()), "num_processes": accelerator.num_processes}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
            self.prune_checkpoints()
        accelerator.wait_for_everyone()
        return folder

    def prune_checkpoints(self) -> None:
        keep = self.config.keep_checkpoints
        if not keep:
            return
        found = sorted((int(m.group(1)), p) for p in self.output.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name)))
        for _, path in found[:-keep]:
            shutil.rmtree(path, ignore_errors=True)

    def validate(self, step: int) -> str | None:
        """Main process: generate the validation prompt for the first samples; others wait."""
        path = None
        if self.is_main:
            from elite_cli.training.validation import validation_grid

            self.mapper.eval()
            with self.accelerator.autocast():
                grid = validation_grid(self, step)
            self.mapper.train()
            path = self.output / "validation" / f"step-{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
        self.accelerator.wait_for_everyone()
        return str(path) if path else None


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run one training stage to config.max_steps; return where the mapper was written."""
    return Trainer(config, progress).run()
