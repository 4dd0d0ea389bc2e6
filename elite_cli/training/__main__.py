"""`python -m elite_cli.training ...` = `elite train ...`; what `accelerate launch -m` runs."""

from elite_cli.commands.train import train_app

train_app(prog_name="elite train")
