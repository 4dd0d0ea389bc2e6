"""Tiny, random, offline stand-ins for the metric models (CLIP ViT-B/32 and DINO ViT-S/16).

Saved with `save_pretrained` in the same folder layouts as the hub models, so tests load them
through exactly the code path `--clip-model FOLDER` / `--dino-model FOLDER` takes. Their scores
are meaningless numbers; they prove the plumbing (and that identical images score 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TINY_WIDTH = 32
TINY_IMAGE_SIZE = 32  # two 16-px patches a side: DINO's patch size, CLIP's too here
MARKER = "elite-tiny-metrics.json"
TINY_VERSION = 1


@dataclass
class TinyMetricModels:
    clip: Path
    dino: Path


def build_tiny_metric_models(directory: str | Path, seed: int = 0) -> TinyMetricModels:
    """Build (or reuse, if already built here) a tiny CLIPModel folder and a tiny DINO ViTModel folder."""
    import torch
    import transformers.utils.logging as transformers_logging
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

    from elite_cli.model.tiny import write_tiny_vocab

    directory = Path(directory)
    paths = TinyMetricModels(directory / "clip", directory / "dino")
    marker = directory / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
        return paths

    transformers_logging.disable_progress_bar()  # "Writing model shards" bars are noise in test logs
    torch.manual_seed(seed)
    vocab_file, merges_file = write_tiny_vocab(directory / "vocab")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    text_config = dict(vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision_config = dict(hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         image_size=TINY_IMAGE_SIZE, patch_size=16)
    clip = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16))
    clip.save_pretrained(paths.clip)
    tokenizer.save_pretrained(paths.clip)

    dino = ViTModel(ViTConfig(hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=TINY_IMAGE_SIZE, patch_size=16), add_pooling_layer=False)
    dino.save_pretrained(paths.dino)
    marker.write_text(json.dumps({"version": TINY_VERSION}))
    return paths
