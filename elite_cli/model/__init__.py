"""The ELITE model math and what feeds it: loading (local, cache, Hub), mappers, attention, encoding, generation of one batch, pictures and masks."""
