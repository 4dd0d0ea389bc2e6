"""`elite eval`: CLIP-T, CLIP-I and DINO for concepts, DreamBench prompts, contact sheets, comparisons.

Modules: metrics (scores and the metric models), dreambench (prompt templates as data),
runner (generate + score + write), subjects (library concepts or pictures), contact_sheet,
compare, tiny_metric_models (offline test models), cli (`eval_command`). Importing this package
or `cli` does not import torch.
"""

# Textual Inversion's evaluator uses CLIP ViT-B/32; DreamBench papers add DINO ViT-S/16.
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
