"""`elite train`: the Typer sub-app for mapper training (mounted by elite_cli/commands/__init__.py).

Parses flags into a TrainConfig, calls the training core, prints progress with rich on the
main process. torch, accelerate and diffusers are imported inside the commands only.

Multi-GPU / multi-node: the same command under accelerate, e.g.
    accelerate launch --multi_gpu --num_processes 4 -m elite_cli.training global --data ... -o ...
(`-m elite_cli train global ...` once the sub-app is mounted as `elite train`).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from elite_cli.errors import EliteError
from elite_cli.training.recipe import DEFAULT_BASE_MODEL, DEFAULT_IMAGE_ENCODER, TrainConfig
from elite_cli.common.wording import counted

train_app = typer.Typer(
    help="Train ELITE's global and local mapping networks (reference recipe, Hugging Face accelerate).\n\n"
    "Example: elite train global --data crops/ -o runs/global",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Our typed errors become `Error: ...` (exit 1), whichever app this sub-app is mounted in."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EliteError as error:
            typer.echo(f"Error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted; continue with --resume latest (from the last checkpoint).", err=True)
            raise typer.Exit(130) from None
        except RuntimeError as error:
            # torch.cuda.OutOfMemoryError, matched by name so this module never imports torch.
            if type(error).__name__ != "OutOfMemoryError":
                raise
            typer.echo("Error: the GPU ran out of memory; lower --batch-size (raise --gradient-accumulation to keep "
                       "the total batch), add --gradient-checkpointing, or use --mixed-precision fp16.", err=True)
            raise typer.Exit(1) from None

    return run


# ---- shared options ------------------------------------------------------------------------------
Data = Annotated[Path, typer.Option("--data", "-d", help="Folder of name.jpg + name_mask.png pairs, or a .jsonl manifest.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, logs and the trained mapper.")]
BaseModel = Annotated[Optional[str], typer.Option(
    metavar="<model>", show_default=False,
    help="Stable Diffusion hub id or diffusers folder (default: the base_model setting: ELITE_BASE_MODEL, config.toml, "
         f"else {DEFAULT_BASE_MODEL}).")]
ImageEncoder = Annotated[Optional[str], typer.Option(
    metavar="<model>", show_default=False,
    help="CLIP vision hub id or folder (default: the image_encoder setting: ELITE_IMAGE_ENCODER, config.toml, "
         f"else {DEFAULT_IMAGE_ENCODER}).")]
Init = Annotated[Optional[Path], typer.Option(help="Start from these mapper weights instead of fresh ones.")]
Resolution = Annotated[int, typer.Option(help="Training image size in pixels (multiple of 8).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Batch per process (default: 4 global, 2 local, as the reference).", show_default=False)]
Accumulation = Annotated[int, typer.Option("--gradient-accumulation", help="Micro-batches per optimizer step.")]
LearningRate = Annotated[Optional[float], typer.Option(
    help="Base learning rate, multiplied by the total batch unless --no-scale-lr (default: 1e-6 global, 1e-5 local).",
    show_default=False)]
ScaleLr = Annotated[bool, typer.Option("--scale-lr/--no-scale-lr", help="Scale the learning rate by batch x accumulation x processes.")]
LrScheduler = Annotated[str, typer.Option(metavar="<schedule>", help="constant, constant_with_warmup, linear or cosine.")]
Warmup = Annotated[int, typer.Option(help="Warm-up steps of the learning-rate schedule.")]
MaxSteps = Annotated[int, typer.Option(help="Optimizer steps to train for.")]
CheckpointEvery = Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps (0: only at the end).")]
KeepCheckpoints = Annotated[int, typer.Option(help="Keep only the newest N checkpoints (0: keep all).")]
ValidateEvery = Annotated[int, typer.Option(help="Write validation images every N steps (0: never).")]
ValidationCount = Annotated[int, typer.Option(help="How many training pictures to validate on.")]
ValidationPrompt = Annotated[str, typer.Option(metavar="<prompt>", help="Validation prompt; <concept> stands for the picture.")]
ValidationSteps = Annotated[int, typer.Option(help="Denoising steps of validation images.")]
Seed = Annotated[int, typer.Option(help="Seed of the mapper's initialisation, data order, augmentation and noise.")]
MixedPrecision = Annotated[Optional[str], typer.Option(
    metavar="<no|fp16|bf16>", help="no, fp16 or bf16 (default: what `accelerate config` / `accelerate launch` chose).", show_default=False)]
Checkpointing = Annotated[bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory in the UNet.")]
Workers = Annotated[int, typer.Option("--workers", "--num-workers", help="Data-loading processes per training process.")]
Tensorboard = Annotated[bool, typer.Option("--tensorboard", help="Also log to TensorBoard (needs `pip install tensorboard`).")]
Resume = Annotated[Optional[str], typer.Option(metavar="<checkpoint|latest>", help="Continue from a checkpoint folder, or 'latest' in --output.")]
Cpu = Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present (tiny models, tests).")]
Attention = Annotated[str, typer.Option(metavar="<auto|sdpa|xformers>", help="auto, sdpa or xformers.")]
HiddenWidth = Annotated[int, typer.Option(help="Width of the mapping MLPs (the reference's 1024).")]


def run_training(**values: Any) -> None:
    values["device"] = "cpu" if values.pop("cpu") else "auto"
    for key in ("base_model", "image_encoder"):
        if values[key] is None:  # the same settings every other command uses (flag, env, config.toml, default)
            from elite_cli.commands.common import setting

            values[key] = setting(key)
    for key in ("data", "output", "init", "global_mapper"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    values = {key: ("" if value is None and key in ("init", "resume", "global_mapper") else value)
              for key, value in values.items()}
    config = TrainConfig(**values).resolved()  # bad flags fail before torch is imported
    from elite_cli.training.loop import train

    with TrainingDisplay() as display:
        result = train(config, display.update)
    if result.is_main_process:
        typer.echo(f"Trained {config.stage} mapper: {result.mapper} ({counted(result.steps, 'step')}, "
                   f"last loss {result.last_loss:.4f})")


class TrainingDisplay:
    """Rich progress for the main process (the core sends it events; other processes get none)."""

    def __init__(self, console=None):
        self.console = console  # a rich Console; None: stderr

    def __enter__(self) -> "TrainingDisplay":
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = self.console or Console(stderr=True)
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"), console=self.console, transient=False)
        self.task = None
        return self

    def update(self, event: object) -> None:
        from elite_cli.training.loop import RunStarted, StepDone

        if isinstance(event, RunStarted):
            # soft_wrap: one line however narrow the terminal (or 80 columns when piped to a log).
            self.console.print(
                f"{counted(event.samples, 'sample')} ({event.skipped_at_scan} skipped), "
                f"{counted(event.num_processes, 'process', 'processes')} on {event.device}, precision "
                f"{event.mixed_precision}, total batch {event.total_batch}, lr {event.learning_rate:.3g}"
                + (f", resuming at step {event.start_step}" if event.start_step else ""),
                soft_wrap=True, highlight=False,
            )
            if event.resume_found_nothing:
                self.console.print("No checkpoint in the output folder yet: starting from step 0.", soft_wrap=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=event.max_steps, completed=event.start_step)
        elif isinstance(event, StepDone) and self.task is not None:
            self.bar.update(self.task, completed=event.step, description=(
                f"loss {event.loss:.4f} (mse {event.mse:.4f}) lr {event.lr:.2e} {event.images_per_second:.1f} img/s"
                + (f" skipped {event.skipped}" if event.skipped else "")))
            if event.checkpoint:
                self.bar.console.print(f"checkpoint: {event.checkpoint}", soft_wrap=True, highlight=False)
            if event.validation:
                self.bar.console.print(f"validation images: {event.validation}", soft_wrap=True, highlight=False)

    def __exit__(self, *exc) -> None:
        if self.task is not None:  # a run refused before it started leaves no blank line above its error
            self.bar.stop()


GlobalMapper = Annotated[Path, typer.Option(help="The trained global mapper (.safetensors or reference .pt).")]


def stage_options(
    data: Data, output: Output,
    base_model: BaseModel = None, image_encoder: ImageEncoder = None,
    init: Init = None, resolution: Resolution = 512, batch_size: BatchSize = None, gradient_accumulation: Accumulation = 4,
    learning_rate: LearningRate = None, scale_lr: ScaleLr = True, lr_scheduler: LrScheduler = "constant",
    lr_warmup_steps: Warmup = 0, max_steps: MaxSteps = 200_000, checkpoint_every: CheckpointEvery = 1000,
    keep_checkpoints: KeepCheckpoints = 0, validate_every: ValidateEvery = 0, validation_count: ValidationCount = 2,
    validation_prompt: ValidationPrompt = "a photo of a <concept>", validation_steps: ValidationSteps = 25,
    seed: Seed = 0, mixed_precision: MixedPrecision = None, gradient_checkpointing: Checkpointing = False,
    num_workers: Workers = 2, tensorboard: Tensorboard = False, resume: Resume = None, cpu: Cpu = False,
    attention: Attention = "auto", hidden_width: HiddenWidth = 1024,
) -> None:
    """The options both training stages take; only this signature is used (by `stage_command`)."""


def stage_command(stage: str, description: str, *required: inspect.Parameter) -> Callable[..., None]:
    """The command of one training stage: `stage_options`' options, with the stage's own
    `required` ones after --data and --output, run through `run_training`."""

    def command(**values: Any) -> None:
        run_training(stage=stage, **values)

    shared = list(inspect.signature(stage_options, eval_str=True).parameters.values())
    # Typer reads a command's options from its signature.
    command.__signature__ = inspect.Signature([*shared[:2], *required, *shared[2:]])  # type: ignore[attr-defined]
    command.__name__ = command.__qualname__ = f"train_{stage}"
    command.__doc__ = description
    return command


train_global = train_app.command("global")(one_line_errors(stage_command(
    "global",
    "Stage 1: train the global mapper (five words + key/value copies) on object crops.\n\n"
    "Example: accelerate launch -m elite_cli train global --data oi-global.jsonl -o runs/global --mixed-precision fp16",
)))
train_local = train_app.command("local")(one_line_errors(stage_command(
    "local",
    "Stage 2: train the local mapper (patch tokens + key/value copies) with the global mapper frozen.\n\n"
    "Example: elite train local --data oi-local.jsonl --global-mapper runs/global/global_mapper.safetensors -o runs/local",
    inspect.Parameter("global_mapper", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=GlobalMapper),
)))


@train_app.command("convert-openimages")
@one_line_errors
def convert_openimages(
    stage: Annotated[str, typer.Option(
        metavar="<global|local>", help="global: boxes from the box CSV (test-annotations-bbox.csv, recommended) or the segmentation CSV, "
        "no masks; local: boxes from the masks, needs the segmentation CSV and --masks.", show_default=False)],
    annotations: Annotated[Path, typer.Option(
        help="Open Images CSV: test-annotations-bbox.csv (global) or test-annotations-object-segmentation.csv (either stage).")],
    images: Annotated[Path, typer.Option(help="Folder with the {ImageID}.jpg images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write (.jsonl).")],
    masks: Annotated[Optional[Path], typer.Option(help="Folder with the unpacked mask PNGs (local stage only).")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="oidv6-class-descriptions.csv, for category names.")] = None,
    min_area: Annotated[Optional[float], typer.Option(
        help="Smallest box area as a share of the image (default: 0.02 global, off local).", show_default=False)] = None,
    max_area: Annotated[Optional[float], typer.Option(
        help="Largest box area as a share of the image (default: 0.8 global, off local).", show_default=False)] = None,
    min_side: Annotated[Optional[int], typer.Option(
        help="Smallest object height and width in pixels (default: off global, 100 local).", show_default=False)] = None,
    min_aspect: Annotated[Optional[float], typer.Option(
        help="Smallest shorter/longer side ratio of the object (default: off global, 0.5 local).", show_default=False)] = None,
) -> None:
    """Turn Open Images V6 annotations into a training manifest for one stage (the reference's data and filters).

    Example: elite train convert-openimages --stage global --annotations test-annotations-bbox.csv --images images/test -o oi-global.jsonl
    """
    from elite_cli.training.openimages import convert_open_images, stage_filters

    filters = stage_filters(stage, min_area_share=min_area, max_area_share=max_area, min_side=min_side,
                            min_aspect=min_aspect)
    if stage == "global" and masks is not None:
        typer.echo("Note: the global stage trains on whole box crops; --masks is not used.", err=True)
    report = convert_open_images(stage, annotations, images, output, masks_dir=masks, classes=classes, filters=filters)
    typer.echo(f"{report.kept} of {report.total} instances written to {output}")
    for reason, count in report.skipped.most_common():
        typer.echo(f"  skipped {count}: {reason}")
