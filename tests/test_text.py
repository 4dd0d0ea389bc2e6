"""Placeholder positions on token ids and word injection into the text encoder."""

import warnings

import pytest
import torch

from elite_cli.errors import InputError
from elite_cli.model.prompts import check_placeholders, concept_names, split_prompt
from elite_cli.model.text import PromptEncoder, PromptTruncatedWarning


@pytest.fixture(scope="module")
def prompt_encoder(loaded_models):
    return PromptEncoder(loaded_models.tokenizer, loaded_models.text_encoder)


def test_concept_names_and_split():
    assert concept_names("<a> next to <b-2> and <a>") == ["a", "b-2"]
    assert split_prompt("x <cat>'s toy") == ["x ", ("cat",), "'s toy"]
    assert concept_names("a < b > c <no spaces>") == []


def test_reference_prompt_has_the_reference_token_ids(prompt_encoder, loaded_models):
    ours = prompt_encoder.tokenize("a photo of a <mycat>")
    reference = loaded_models.tokenizer("a photo of a S", padding="max_length", max_length=77).input_ids
    assert ours.input_ids == reference
    assert ours.slots == [(5, "mycat")]  # the reference's index: 4 words + BOS


def test_position_after_words_that_split_into_several_tokens(prompt_encoder, loaded_models):
    prefix = "a fluffy striped"
    prefix_tokens = loaded_models.tokenizer(prefix, add_special_tokens=False).input_ids
    assert len(prefix_tokens) > 3  # these words are not single tokens in the tiny vocabulary
    tokenized = prompt_encoder.tokenize(f"{prefix} <x> on the beach next to <y>")
    (p_x, name_x), (p_y, name_y) = tokenized.slots
    assert (name_x, name_y) == ("x", "y")
    assert p_x == 1 + len(prefix_tokens)  # whitespace splitting would say 4
    between = loaded_models.tokenizer(" on the beach next to ", add_special_tokens=False).input_ids
    assert p_y == p_x + 1 + len(between)


@torch.no_grad()
def test_injected_word_replaces_the_token_embedding_before_positions(prompt_encoder, loaded_models):
    tokenizer = loaded_models.tokenizer
    cat_id = tokenizer("cat", add_special_tokens=False).input_ids
    assert len(cat_id) == 1
    word = loaded_models.text_encoder.get_input_embeddings().weight[cat_id[0]].clone()
    injected = prompt_encoder.encode([prompt_encoder.tokenize("a photo of a <x>")], {"x": word})
    plain = prompt_encoder.encode_plain(["a photo of a cat"])
    assert (injected - plain).abs().max() < 1e-5
    other = prompt_encoder.encode([prompt_encoder.tokenize("a photo of a <x>")], {"x": word + torch.randn_like(word)})
    assert (other - plain).abs().max() > 1e-3
    # Causal attention: tokens before the placeholder are unaffected by it.
    assert (other[:, :5] - plain[:, :5]).abs().max() < 1e-6


def test_long_prompt_warns_with_dropped_words(prompt_encoder):
    long = "<x> " + " ".join(["red"] * 80) + " blue"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenized = prompt_encoder.tokenize(long)
    assert len(tokenized.input_ids) == 77
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning)]
    assert messages and "blue" in messages[0]


def test_placeholder_outside_the_window_is_an_error(prompt_encoder):
    with pytest.raises(InputError, match="<x> falls outside it"):
        prompt_encoder.tokenize(" ".join(["red"] * 80) + " <x>")


@pytest.mark.parametrize("prompt", ["I <3 <mycat>", "<mycat> -> a statue", "x > y and <mycat>", "a <- b <mycat>", "<mycat>>"])
def test_angle_brackets_that_cannot_be_placeholders_are_text(prompt):
    check_placeholders(prompt)
    assert concept_names(prompt) == ["mycat"]


@pytest.mark.parametrize("prompt, message", [
    ("<mycat on the beach", "without a closing '>'"),
    ("<my cat> on the beach", "'<my cat>', which is not a concept placeholder"),
    ("mycat> on the beach", "'>' without an opening '<'"),
    ("< mycat> on the beach", "'>' without an opening '<'"),
])
def test_placeholder_typos_are_refused(prompt, message):
    with pytest.raises(InputError, match=message):
        check_placeholders(prompt)
