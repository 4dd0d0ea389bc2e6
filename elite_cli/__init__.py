"""elite: customized text-to-image generation with ELITE encoders.

Importing this package is cheap: torch, diffusers and transformers are imported only by
the modules that need them, so `elite --help` and `elite list` stay fast.
"""

__version__ = "0.1.0"
