"""`elite eval`: CLIP-T, CLIP-I and DINO for concepts, DreamBench prompts, contact sheets, comparisons.

Modules: metrics (scores and the metric models), dreambench (prompt templates as data),
runner (generate + score + write), run (the steps of `elite eval`: plan, load, encode,
evaluate), subjects (library concepts or pictures), contact_sheet, compare, tiny_metric_models (offline test models); the `elite eval` command is
elite_cli/commands/evaluate.py. Importing this package does not import torch.
"""

from elite_cli.common.config import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL  # noqa: F401  (the settings' defaults)
