"""The library with the real Encoder on the tiny models and the sample pictures in library/samples."""

from __future__ import annotations

import torch

from elite_cli.library import ConceptStore
from library_support import SAMPLES


def test_encoded_sample_round_trips_and_reencodes(tmp_path, loaded_models):
    from elite_cli.model.encoder import Encoder

    encoder = Encoder(loaded_models)
    image, mask = SAMPLES / "chelsea.png", SAMPLES / "chelsea_mask.png"
    concept = encoder.encode(image, mask)
    store = ConceptStore(tmp_path)
    record = store.add(concept, image_path=image, mask_path=mask, tags=["sample"])
    assert record.name == "chelsea" and record.mapper_matches(loaded_models.global_fingerprint,
                                                              loaded_models.local_fingerprint)
    assert store.find_duplicate(concept.provenance["image_sha256"], concept.provenance["mask_sha256"],
                                loaded_models.global_fingerprint, loaded_models.local_fingerprint).id == record.id
    loaded = store.load("chelsea")
    assert torch.equal(loaded.words, concept.words.half().float())
    assert torch.equal(loaded.local, concept.local.half().float())
    assert loaded.provenance == concept.provenance
    # Same mappers, same sources: re-encoding changes nothing.
    assert store.reencode("chelsea", encoder).duplicate
    assert store.stale(loaded_models.global_fingerprint, loaded_models.local_fingerprint) == []
