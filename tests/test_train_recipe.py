"""The recipe's defaults and learning-rate scaling (pure Python, no torch)."""

import pytest

from elite_cli.errors import InputError
from elite_cli.training.recipe import TrainConfig


def test_stage_defaults_are_the_reference_values():
    global_stage = TrainConfig(stage="global", data="d", output="o").resolved()
    local_stage = TrainConfig(stage="local", data="d", output="o", global_mapper="g.pt").resolved()
    assert (global_stage.batch_size, global_stage.learning_rate, global_stage.regularization) == (4, 1e-6, 0.01)
    assert (local_stage.batch_size, local_stage.learning_rate, local_stage.regularization) == (2, 1e-5, 1e-4)
    assert global_stage.gradient_accumulation == 4 and global_stage.lr_scheduler == "constant"
    assert global_stage.max_grad_norm == 1.0 and global_stage.resolution == 512
    # The reference: 1e-6 x batch 4 x accumulation 4 x 4 GPUs.
    assert global_stage.scaled_learning_rate(4) == pytest.approx(6.4e-5)
    assert TrainConfig(stage="global", data="d", output="o", scale_lr=False).resolved().scaled_learning_rate(4) == 1e-6


def test_recipe_metadata_round_trips_and_names_no_user_paths():
    config = TrainConfig(stage="global", data="/home/me/secret", output="o", batch_size=3).resolved()
    recipe = config.recipe(2)
    assert recipe["total_batch"] == 24 and recipe["effective_learning_rate"] == pytest.approx(24e-6)
    assert "/home/me/secret" not in str(recipe)
    assert TrainConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("overrides, message", [
    (dict(stage="middle"), "must be 'global' or 'local'"),
    (dict(stage="local"), "--global-mapper"),
    (dict(batch_size=0), "--batch-size must be at least 1"),
    (dict(learning_rate=-1.0), "--learning-rate must be a positive number"),
    (dict(learning_rate=float("inf")), "--learning-rate must be a positive number but is inf"),
    (dict(learning_rate=float("nan")), "--learning-rate must be a positive number but is nan"),
    (dict(attention="flash"), "--attention 'flash' is not supported; use auto, sdpa or xformers"),
    (dict(mixed_precision="fp8"), "--mixed-precision 'fp8'"),
    (dict(checkpoint_every=-1), "--checkpoint-every must be 0 or more"),
    (dict(validate_every=10, validation_count=0), "--validation-count must be at least 1 with --validate-every"),
])
def test_bad_settings_are_one_sentence(overrides, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**{"stage": "global", "data": "d", "output": "o", **overrides}).resolved()
