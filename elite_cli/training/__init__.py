"""Training ELITE's two mapping networks with the reference recipe (ELITE_SPEC.md section 7).

Modules, in the order a run uses them:
- data.py / openimages.py: samples (folder, JSONL manifest, Open Images converter).
- augment.py, captions.py: the reference's augmentations and caption templates, without cv2,
  albumentations or torchvision.
- recipe.py: every hyperparameter of a run, with the reference's defaults per stage.
- components.py: frozen SD/CLIP models and fresh mappers initialised from the UNet.
- objectives.py: the two losses.
- loop.py: the accelerate training loop (checkpoints, resume, validation, logging).
The `elite train` command is elite_cli/commands/train.py (heavy imports inside the commands).

Nothing here imports torch at module level except the modules only the loop imports.
"""
