"""elite: customized text-to-image generation with ELITE encoders.

Importing this package is cheap: torch, diffusers and transformers are imported only by
the modules that need them, so `elite --help` and `elite list` stay fast.
"""

import time

__version__ = "0.1.0"
IMPORTED_AT = time.perf_counter()  # where /proc cannot say when the process started
