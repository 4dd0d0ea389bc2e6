"""Prompt encoding with concept words injected (ELITE_SPEC.md section 4).

Each `<name>` in a prompt takes exactly one token position. Positions are found on token ids:
the prompt is tokenized piece by piece around its placeholders (CLIP's tokenizer splits on
whitespace and punctuation first, so this matches tokenizing the whole string), and each
placeholder gets one slot. The concept's w0 replaces the token embedding at its slot *before*
position embeddings are added, through a forward hook on the text encoder's input-embedding
layer; the rest of the text encoder runs unchanged (this works the same on transformers 4 and 5).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping

import torch

from elite_cli.errors import InputError
from elite_cli.model.prompts import split_prompt

# The reference's placeholder word. Its token id fills each placeholder slot, so a prompt
# "a photo of a <x>" has exactly the ids of the reference's "a photo of a S" (the embedding at
# that slot is replaced anyway; the id only keeps pooled outputs sensible).
REFERENCE_PLACEHOLDER = "S"


def quoted_start(prompt: str, length: int = 40) -> str:
    """A prompt as messages name it: quoted, its start only when it is long (a batch has many)."""
    return repr(prompt if len(prompt) <= length else prompt[:length].rstrip() + "...")


class PromptTruncatedWarning(UserWarning):
    """A prompt did not fit CLIP's token window; the message lists the dropped words."""


@dataclass
class TokenizedPrompt:
    input_ids: list[int]  # full window: BOS, tokens, EOS, padding
    slots: list[tuple[int, str]] = field(default_factory=list)  # (position, concept name)


class PromptEncoder:
    """Tokenizes prompts with placeholders and runs the text encoder with concept words injected."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.window = int(tokenizer.model_max_length)
        placeholder_ids = tokenizer(REFERENCE_PLACEHOLDER, add_special_tokens=False).input_ids
        self.placeholder_id = int(placeholder_ids[0]) if placeholder_ids else int(tokenizer.unk_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        ids: list[int] = []
        slots: list[tuple[int, str]] = []
        for piece in split_prompt(prompt):
            if isinstance(piece, tuple):
                slots.append((len(ids) + 1, piece[0]))  # +1 for the BOS token
                ids.append(self.placeholder_id)
            else:
                ids.extend(self.tokenizer(piece, add_special_tokens=False).input_ids)
        room = self.window - 2
        if len(ids) > room:
            dropped = self.tokenizer.decode(ids[room:]).strip()
            lost = [name for position, name in slots if position > room]
            if lost:
                raise InputError(
                    f"the prompt {quoted_start(prompt)} is longer than the text encoder's {room}-token window and "
                    f"<{lost[0]}> falls outside it; shorten the prompt or move the concept earlier."
                )
            warnings.warn(
                f"prompt {quoted_start(prompt)} is longer than {room} tokens; these words were dropped: {dropped!r}",
                PromptTruncatedWarning,
                stacklevel=2,
            )
            ids = ids[:room]
        bos, eos = int(self.tokenizer.bos_token_id), int(self.tokenizer.eos_token_id)
        full = [bos, *ids, eos]
        full += [self.pad_id] * (self.window - len(full))
        return TokenizedPrompt(full, slots)

    def dropped_negative_words(self, negative_prompt: str) -> str | None:
        """The words of a negative prompt that do not fit the window (encode_plain cuts them), or None."""
        ids = self.tokenizer(negative_prompt, add_special_tokens=False).input_ids
        room = self.window - 2
        return self.tokenizer.decode(ids[room:]).strip() if len(ids) > room else None

    @contextmanager
    def _injecting(self, replacements: list[tuple[int, int, torch.Tensor]]):
        """Replace token embeddings at (row, position) by the given vectors during the block."""

        def hook(module, inputs, output):
            output = output.clone()
            for row, position, vector in replacements:
                output[row, position] = vector.to(device=output.device, dtype=output.dtype)
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode_ids(self, input_ids: torch.Tensor, replacements: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
        """Hidden states for token ids [B, window] with embeddings replaced at (row, position).

        Not wrapped in no_grad: training passes words that need gradients.
        """
        with self._injecting(replacements):
            return self.text_encoder(input_ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def encode(self, prompts: list[TokenizedPrompt], concepts: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Text-encoder hidden states [B, window, Dt] with each slot's concept word (w0) injected.

        concepts maps a name to the word vector [Dt] to put at that name's slots.
        """
        input_ids = torch.tensor([prompt.input_ids for prompt in prompts], dtype=torch.long)
        replacements = []
        for row, prompt in enumerate(prompts):
            for position, name in prompt.slots:
                if concepts is None or name not in concepts:
                    raise InputError(f"the prompt mentions <{name}> but no concept of that name was given.")
                replacements.append((row, position, concepts[name]))
        return self.encode_ids(input_ids, replacements)

    @torch.no_grad()
    def encode_plain(self, texts: list[str]) -> torch.Tensor:
        """Hidden states for prompts without placeholders (the negative / unconditional branch)."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.window, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]


def prompt_fit_warnings(base_model: str, prompts: list[str], negative_prompts: list[str]) -> list[str] | None:
    """Tokenize prompts with the base model's tokenizer alone, before the models load.

    A concept beyond the token window raises InputError (before any image is made); the words cut
    from a prompt or negative prompt come back as warning messages, each once. None when the
    tokenizer does not load: the model loading reports that, in its usual order.
    """
    from elite_cli.errors import ModelError
    from elite_cli.model.loading import load_pretrained

    try:
        from transformers import CLIPTokenizer

        tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, base_model, "base model tokenizer", kind="base_model",
                                    subfolder="tokenizer")
    except ModelError:
        return None
    encoder = PromptEncoder(tokenizer, text_encoder=None)
    messages: dict[str, None] = {}
    for prompt in dict.fromkeys(prompts):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncatedWarning)
            encoder.tokenize(prompt)
        messages.update((str(w.message), None) for w in caught if issubclass(w.category, PromptTruncatedWarning))
    for negative in dict.fromkeys(negative_prompts):
        dropped = encoder.dropped_negative_words(negative) if negative else None
        if dropped:
            messages[f"negative prompt {quoted_start(negative)} is longer than {encoder.window - 2} tokens; "
                     f"these words were dropped: {dropped!r}"] = None
    return list(messages)
