"""Both training stages on the tiny models: learning, exact resumption, and the trained mappers
used by the encoder and generator exactly as `elite add` / `elite gen` use them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from elite_cli.training.loop import StepDone, Trainer, row_generators, train
from elite_cli.training.recipe import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_pair(folder, name, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    mask = np.zeros((80, 96), np.uint8)
    mask[15 + seed : 60, 20 : 70 - seed] = 255
    Image.fromarray(mask).save(folder / f"{name}_mask.png")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models run several times faster on one thread than on a busy pair of cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-data")
    for i in range(5):
        write_pair(folder, f"object{i}", i)
    # Found by the folder scan, fails to decode during training: skipped and counted.
    write_pair(folder, "object5", 5)
    (folder / "object5.png").write_bytes(b"\x89PNG truncated")
    return folder


def config(tiny_models, data, output, stage="global", **overrides):
    values = dict(
        stage=stage, data=str(data), output=str(output), base_model=str(tiny_models.base_model),
        image_encoder=str(tiny_models.image_encoder), resolution=64, batch_size=2, gradient_accumulation=1,
        hidden_width=64, learning_rate=1e-4, scale_lr=False, max_steps=4, checkpoint_every=2, device="cpu",
        num_workers=0, seed=5,
    )
    values.update(overrides)
    return TrainConfig(**values)


def mapper_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def global_run(tiny_models, data, tmp_path_factory):
    output = tmp_path_factory.mktemp("global-run")
    events = []
    result = train(config(tiny_models, data, output, gradient_accumulation=2), events.append)
    return output, result, events


# ---- learning ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, steps, ratio", [("global", 25, 0.7), ("local", 12, 0.35)])
def test_a_fixed_batch_is_overfitted(tiny_models, data, tmp_path, stage, steps, ratio, global_run):
    """The overfitting check: same batch, same noise and timesteps, loss falls clearly.

    (The global stage can only move the words and the cross-attention keys/values of a random
    UNet, so its floor is higher than the local stage's.)
    """
    extra = {"global_mapper": str(global_run[1].mapper)} if stage == "local" else {}
    trainer = Trainer(config(tiny_models, data, tmp_path, stage=stage, learning_rate=1e-2, **extra))
    trainer.setup()
    batch = next(iter(trainer.loader(0)))
    losses = []
    for _ in range(steps):
        terms = trainer.objective(batch, row_generators(0, 0, 0, 2))
        terms.loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        losses.append(float(terms.loss.detach()))
    assert losses[-1] < ratio * losses[0], losses
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("stage", ["global", "local"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_models, data, tmp_path, stage, global_run):
    extra = {"global_mapper": str(global_run[1].mapper)} if stage == "local" else {}
    gradients = []
    for checkpointing in (False, True):
        trainer = Trainer(config(tiny_models, data, tmp_path / str(checkpointing), stage=stage,
                                 gradient_checkpointing=checkpointing, **extra))
        trainer.setup()
        batch = next(iter(trainer.loader(0)))
        trainer.objective(batch, row_generators(0, 0, 0, 2)).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in trainer.raw_mapper.named_parameters()})
        trainer.frozen.unet.disable_gradient_checkpointing()
    plain, checkpointed = gradients
    assert all(torch.allclose(plain[name], checkpointed[name], atol=1e-6) for name in plain)
    assert any(float(g.abs().max()) > 0 for g in plain.values())


# ---- checkpoints and resumption ----------------------------------------------------------------

def test_run_writes_loadable_checkpoints_logs_and_metadata(global_run, tiny_models):
    from safetensors import safe_open

    output, result, events = global_run
    assert result.steps == 4 and result.mapper == output / "global_mapper.safetensors"
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4] and all(entry["lr"] == 1e-4 for entry in log)
    # 16 draws over 6 samples hit the broken one; each time the next sample stood in.
    skipped = (output / "skipped-process0.txt").read_text().splitlines()
    assert skipped and all("object5.png" in line for line in skipped)
    assert log[-1]["skipped"] == len(skipped) and events[-1].skipped == len(skipped)
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]
    with safe_open(str(result.mapper), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "elite-mapper" and metadata["mapper"] == "global"
    assert metadata["base_model"] == str(tiny_models.base_model)
    assert metadata["image_encoder"] == str(tiny_models.image_encoder)
    recipe = json.loads(metadata["recipe"])
    assert recipe["regularization"] == 0.01 and recipe["total_batch"] == 4 and recipe["stage"] == "global"
    assert recipe["mixed_precision"] == "no"  # what accelerate used, not the unset option
    from elite_cli.model.mappers import fingerprint

    assert metadata["fingerprint"] == fingerprint(mapper_tensors(result.mapper))
    # The mapper moved away from its initial K/V copies of the UNet.
    first = mapper_tensors(output / "checkpoint-000002" / "global_mapper.safetensors")
    assert any(not torch.equal(first[name], tensor) for name, tensor in mapper_tensors(result.mapper).items())


def test_resuming_reaches_the_uninterrupted_weights(global_run, tiny_models, data, tmp_path):
    output, result, _ = global_run
    resumed = train(config(tiny_models, data, tmp_path, gradient_accumulation=2,
                           resume=str(output / "checkpoint-000002")))
    assert resumed.steps == 4
    expected, got = mapper_tensors(result.mapper), mapper_tensors(resumed.mapper)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    log = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == [3, 4]


def test_resume_latest_finds_the_newest_checkpoint_and_a_wrong_stage_is_refused(global_run, tiny_models, data, tmp_path):
    from elite_cli.errors import InputError
    from elite_cli.training.loop import find_checkpoint

    output, result, _ = global_run
    assert find_checkpoint(output, "latest") == output / "checkpoint-000004"
    assert find_checkpoint(tmp_path, "latest") is None  # nothing yet: a fresh start
    with pytest.raises(InputError, match="not a checkpoint folder"):
        find_checkpoint(output, str(tmp_path))
    with pytest.raises(InputError, match="stage"):
        train(config(tiny_models, data, tmp_path, stage="local", global_mapper=str(result.mapper),
                     resume=str(output / "checkpoint-000002")))


@pytest.mark.parametrize("change", [{"batch_size": 1}, {"gradient_accumulation": 1}, {"seed": 6}, {"learning_rate": 2e-4}])
def test_resume_refuses_settings_that_change_what_the_steps_draw(global_run, tiny_models, data, tmp_path, change):
    from elite_cli.errors import InputError

    output, _, _ = global_run
    name = next(iter(change)).replace("_", "-")
    with pytest.raises(InputError, match=f"made with --{name} .* but this run has .* --init "):
        train(config(tiny_models, data, tmp_path, resume=str(output / "checkpoint-000002"),
                     **{"gradient_accumulation": 2, **change}))
    assert not list(tmp_path.glob("*.safetensors"))  # refused before any step


def test_resume_refuses_another_number_of_processes(global_run, tiny_models, data, tmp_path):
    import shutil

    from elite_cli.errors import InputError
    from elite_cli.training.loop import STATE_FILE

    output, _, _ = global_run
    copy = tmp_path / "runs" / "checkpoint-000002"
    shutil.copytree(output / "checkpoint-000002", copy)
    state = json.loads((copy / STATE_FILE).read_text())
    (copy / STATE_FILE).write_text(json.dumps({**state, "num_processes": 2}))  # as if made by two processes
    with pytest.raises(InputError, match="made by 2 process"):
        train(config(tiny_models, data, tmp_path / "runs", gradient_accumulation=2, resume="latest"))


def test_init_starts_from_given_weights(global_run, tiny_models, data, tmp_path):
    trainer = Trainer(config(tiny_models, data, tmp_path, init=str(global_run[1].mapper)))
    trainer.setup()
    saved = mapper_tensors(global_run[1].mapper)
    state = trainer.raw_mapper.state_dict()
    assert all(torch.equal(state[name], saved[name]) for name in saved)
    assert all(p.requires_grad for p in trainer.raw_mapper.parameters())


# ---- the trained mappers in use ----------------------------------------------------------------

def test_trained_mappers_encode_and_generate_end_to_end(global_run, tiny_models, data, tmp_path):
    from elite_cli.model.encoder import Encoder
    from elite_cli.model.generator import Generator
    from elite_cli.model.loading import ModelSpec, load_models

    global_mapper = global_run[1].mapper
    local = train(config(tiny_models, data, tmp_path / "local", stage="local", global_mapper=str(global_mapper),
                         max_steps=2, checkpoint_every=0, validate_every=2, validation_count=1, validation_steps=2))
    assert local.mapper.name == "local_mapper.safetensors"
    assert (tmp_path / "local" / "validation" / "step-000002.png").is_file()
    models = load_models(ModelSpec(base_model=str(tiny_models.base_model), image_encoder=str(tiny_models.image_encoder),
                                   global_mapper=str(global_mapper), local_mapper=str(local.mapper), device="cpu"))
    concept = Encoder(models).encode(data / "object0.png", data / "object0_mask.png")
    trained = mapper_tensors(global_mapper)
    assert concept.provenance["global_mapper"] == models.global_fingerprint
    assert torch.equal(models.global_mapper.mapping(0)[0].weight, trained["mapping_0.0.weight"])
    images = Generator(models).generate("a photo of a <thing>", {"thing": concept}, steps=2, width=64, height=64)
    assert images[0].size == (64, 64)


# ---- several processes -------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("ELITE_SKIP_MULTIPROCESS") == "1", reason="ELITE_SKIP_MULTIPROCESS=1")
def test_accelerate_launch_two_cpu_processes(tiny_models, data, tmp_path):
    """Two processes of batch 1 train the same weights as one process of batch 2 (DDP averages)."""
    pytest.importorskip("accelerate")
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        "-m", "elite_cli.training", "global", "--data", str(data), "-o", str(output),
        "--base-model", str(tiny_models.base_model), "--image-encoder", str(tiny_models.image_encoder),
        "--resolution", "64", "--batch-size", "1", "--gradient-accumulation", "2", "--learning-rate", "1e-4",
        "--no-scale-lr", "--max-steps", "2", "--checkpoint-every", "0", "--workers", "0", "--seed", "5",
        "--hidden-width", "64", "--cpu",
    ]
    environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes on" in done.stderr
    # Compare with one process of batch 2 over the same global batches.
    single = train(config(tiny_models, data, tmp_path / "single", batch_size=2, gradient_accumulation=2, max_steps=2,
                          checkpoint_every=0))
    expected, got = mapper_tensors(single.mapper), mapper_tensors(output / "global_mapper.safetensors")
    worst = max(float((expected[name] - got[name]).abs().max()) for name in expected)
    # Gradients are summed in another order (all-reduce vs batch mean); a quarter of one Adam
    # step (lr 1e-4) bounds that, while other samples and noise move weights by whole steps.
    assert worst < 2.5e-5
    other = mapper_tensors(train(config(tiny_models, data, tmp_path / "other", batch_size=2, gradient_accumulation=2,
                                        max_steps=2, checkpoint_every=0, seed=6)).mapper)
    assert max(float((expected[name] - other[name]).abs().max()) for name in expected) > 1e-4


def test_trained_checkpoints_work_with_elite_add_and_gen(global_run, tiny_models, data, tmp_path):
    """`elite add` / `elite gen` (the CLI, where it is present) with the mappers `elite train` wrote."""
    cli = pytest.importorskip("elite_cli.commands", reason="the elite CLI is not in this checkout yet")
    from typer.testing import CliRunner

    local = train(config(tiny_models, data, tmp_path / "local", stage="local", global_mapper=str(global_run[1].mapper),
                         max_steps=1, checkpoint_every=1))
    checkpoint = tmp_path / "local" / "checkpoint-000001" / "local_mapper.safetensors"
    assert checkpoint.is_file()
    environment = {
        "ELITE_HOME": str(tmp_path / "home"), "ELITE_BASE_MODEL": str(tiny_models.base_model),
        "ELITE_IMAGE_ENCODER": str(tiny_models.image_encoder), "ELITE_DEVICE": "cpu",
        "ELITE_GLOBAL_MAPPER": str(global_run[0] / "checkpoint-000002" / "global_mapper.safetensors"),
        "ELITE_LOCAL_MAPPER": str(checkpoint),
    }
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in environment.items():
            patch.setenv(variable, value)
        runner = CliRunner()
        added = runner.invoke(cli.app, ["add", str(data / "object1.png"), "--mask", str(data / "object1_mask.png"),
                                        "--name", "thing"])
        assert added.exit_code == 0, added.output
        made = runner.invoke(cli.app, ["gen", "a photo of a <thing>", "--seed", "1", "--steps", "2", "--width", "64",
                                       "--height", "64", "-o", str(tmp_path / "images")])
        assert made.exit_code == 0, made.output
    assert local.mapper.is_file() and len(list((tmp_path / "images").glob("*.png"))) == 1


def test_resume_latest_without_a_checkpoint_says_it_starts_fresh(tiny_models, data, tmp_path):
    from elite_cli.training.loop import RunStarted

    events = []
    train(config(tiny_models, data, tmp_path, max_steps=1, checkpoint_every=0, resume="latest"), events.append)
    started = [event for event in events if isinstance(event, RunStarted)]
    assert started[0].start_step == 0 and started[0].resume_found_nothing
    events.clear()
    train(config(tiny_models, data, tmp_path / "plain", max_steps=1, checkpoint_every=0), events.append)
    assert not [event for event in events if isinstance(event, RunStarted)][0].resume_found_nothing


# ---- refused before any model loads ------------------------------------------------------------

@pytest.fixture
def no_models(monkeypatch):
    """Fails the test if the run gets as far as loading the models."""
    from elite_cli.training import components

    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded before the bad setting was refused")

    monkeypatch.setattr(components, "load_frozen_models", refuse)


def test_output_that_is_a_file_is_refused_before_the_models_load(tiny_models, data, tmp_path, no_models):
    from elite_cli.errors import InputError

    output = tmp_path / "run.txt"
    output.write_text("notes")
    with pytest.raises(InputError, match="--output '.*run.txt' is a file; pass a folder"):
        train(config(tiny_models, data, output))
    assert output.read_text() == "notes"


def test_output_holding_an_earlier_run_is_not_overwritten(global_run, tiny_models, data, no_models):
    from elite_cli.errors import InputError

    output, result, _ = global_run
    before = result.mapper.read_bytes()
    with pytest.raises(InputError, match="already holds a training run .* --resume latest"):
        train(config(tiny_models, data, output))
    with pytest.raises(InputError, match="already holds a training run"):  # the other stage's run too
        train(config(tiny_models, data, output, stage="local", global_mapper=str(result.mapper)))
    assert result.mapper.read_bytes() == before


@pytest.mark.parametrize("stage, flag", [("global", "init"), ("local", "global_mapper")])
def test_missing_mapper_files_are_refused_before_the_models_load(tiny_models, data, tmp_path, no_models, stage, flag):
    from elite_cli.errors import InputError

    overrides = {"global_mapper": str(tmp_path / "g.safetensors")} if stage == "local" else {}
    overrides[flag] = str(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match=f"--{flag.replace('_', '-')} '.*missing.safetensors' is not a file"):
        train(config(tiny_models, data, tmp_path / "out", stage=stage, **overrides))
    assert not (tmp_path / "out").exists()


def test_resume_checks_happen_before_the_models_load(global_run, tiny_models, data, tmp_path, no_models):
    from elite_cli.errors import InputError

    output, _, _ = global_run
    checkpoint = str(output / "checkpoint-000004")
    with pytest.raises(InputError, match="made with --seed"):
        train(config(tiny_models, data, tmp_path, gradient_accumulation=2, seed=6, resume=checkpoint))
    # A checkpoint at or past --max-steps has nothing left to train: said, not silently re-saved.
    with pytest.raises(InputError, match="already at step 4 and --max-steps is 3; pass a larger --max-steps"):
        train(config(tiny_models, data, tmp_path, gradient_accumulation=2, max_steps=3, resume=checkpoint))
    assert not list(tmp_path.iterdir())



def test_progress_lines_are_single_and_say_process_and_step_in_the_right_number(tiny_models, data, tmp_path):
    from rich.console import Console
    from typer.testing import CliRunner

    from elite_cli.commands.train import TrainingDisplay, train_app
    from elite_cli.training.loop import RunStarted

    with open(tmp_path / "empty.txt", "w") as sink, TrainingDisplay(Console(file=sink, width=40)):
        pass  # refused before it started: prints nothing (no blank line before the error)
    assert (tmp_path / "empty.txt").read_text() == ""
    with open(tmp_path / "narrow.txt", "w") as sink, TrainingDisplay(Console(file=sink, width=40)) as display:
        display.update(RunStarted(samples=1, skipped_at_scan=0, num_processes=1, total_batch=2, learning_rate=2e-6,
                                  start_step=3, max_steps=5, device="cpu", mixed_precision="no"))
    first = (tmp_path / "narrow.txt").read_text().splitlines()[0]
    assert first == "1 sample (0 skipped), 1 process on cpu, precision no, total batch 2, lr 2e-06, resuming at step 3"

    result = CliRunner().invoke(train_app, [
        "global", "-d", str(data), "-o", str(tmp_path / "run"), "--base-model", str(tiny_models.base_model),
        "--image-encoder", str(tiny_models.image_encoder), "--resolution", "64", "--batch-size", "2",
        "--gradient-accumulation", "1", "--hidden-width", "64", "--max-steps", "1", "--checkpoint-every", "0",
        "--workers", "0", "--cpu"])
    assert result.exit_code == 0, result.output
    assert "1 process on cpu" in result.output and "(1 step, last loss" in result.output
