"""Finding concept placeholders (`<name>`) in prompts. Pure Python: the CLI uses it without torch."""

from __future__ import annotations

import re

from elite_cli.errors import InputError

# A placeholder is a concept name in angle brackets; names follow the library's rule
# (letters, digits, '-' and '_', 1-64 characters).
PLACEHOLDER = re.compile(r"<([A-Za-z0-9_-]{1,64})>")


# What a user meant as a placeholder: a '<' right before a letter, up to the next bracket (or
# the end of the prompt). A '<' before anything else ("I <3 my cat", "<-") is plain text.
MEANT_PLACEHOLDER = re.compile(r"<[A-Za-z_][^<>]*>?")
# A '>' right after a name character ends a placeholder whose '<' is missing ("mycat> on the
# beach"); after anything else ("a -> b", "x > y") it is plain text.
ORPHAN_CLOSE = re.compile(r"[A-Za-z0-9_]>")


def check_placeholders(prompt: str) -> None:
    """Refuse angle brackets that look like a `<name>` placeholder but are not one.

    Typos such as `<mycat on the beach`, `<my cat>` or `mycat>` would otherwise quietly drop the
    concept; brackets that cannot be meant as a placeholder (`I <3 my cat`, `a -> b`) are text.
    """
    accepted = "name concepts as <name> (letters, digits, '-' and '_'), e.g. \"<mycat> on the beach\""
    rest = PLACEHOLDER.sub(" ", prompt)
    for match in MEANT_PLACEHOLDER.finditer(rest):
        text = match.group(0)
        if not text.endswith(">"):
            raise InputError(f"the prompt {prompt!r} has a '<' without a closing '>'; {accepted}.")
        raise InputError(f"the prompt {prompt!r} has {text!r}, which is not a concept placeholder; {accepted}.")
    if ORPHAN_CLOSE.search(rest):
        raise InputError(f"the prompt {prompt!r} has a '>' without an opening '<'; {accepted}.")


def concept_names(prompt: str) -> list[str]:
    """The concept names a prompt mentions, in order of first appearance, without repeats."""
    seen: dict[str, None] = {}
    for match in PLACEHOLDER.finditer(prompt):
        seen.setdefault(match.group(1), None)
    return list(seen)


def split_prompt(prompt: str) -> list[str | tuple[str]]:
    """Split a prompt into plain-text pieces and placeholders.

    Placeholders come back as one-element tuples `(name,)` so callers can tell them from text:
    `split_prompt("a <cat> toy") == ["a ", ("cat",), " toy"]`.
    """
    pieces: list[str | tuple[str]] = []
    position = 0
    for match in PLACEHOLDER.finditer(prompt):
        if match.start() > position:
            pieces.append(prompt[position : match.start()])
        pieces.append((match.group(1),))
        position = match.end()
    if position < len(prompt):
        pieces.append(prompt[position:])
    return pieces
