"""The bench's prompts: 20 short math and science questions (as in the original experiment), or a file.

For prefill, `exact_length` stretches a prompt to a given number of tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lljx.models import Model

# Three to six words each, like the prompt pool the notebook this grew from asked a model for.
BUILTIN = (
    "Why is the sky blue?",
    "What makes prime numbers special?",
    "How do black holes form?",
    "Why does ice float on water?",
    "What is the Pythagorean theorem?",
    "How do vaccines train immunity?",
    "Is infinity a real number?",
    "Why do magnets attract iron?",
    "What causes the ocean tides?",
    "How does photosynthesis store energy?",
    "What is Euler's identity about?",
    "Why is light speed constant?",
    "How do neurons transmit signals?",
    "What is a fractal?",
    "Why do planets orbit the Sun?",
    "How old is the universe?",
    "What is entropy, simply explained?",
    "Can every map use four colors?",
    "How does DNA copy itself?",
    "Why is zero not divisible?",
)

WARMUP = "Why is the sky blue?"


class PromptError(ValueError):
    """No prompts to run, or a prompts file that cannot be read."""


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per non-empty line; a line that is a JSON string is decoded, so prompts may hold newlines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise PromptError(f"{path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise PromptError(f"{path}: not a UTF-8 text file") from None
    prompts = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text.startswith('"'):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = None
            text = decoded if isinstance(decoded, str) else text
        prompts.append(text)
    if not prompts:
        raise PromptError(f"{path}: no prompts in the file")
    return prompts


def select(count: int | None = None, path: Path | None = None) -> list[str]:
    """The first `count` prompts (all when None) of the file, or of the built-in list."""
    pool = read_prompts_file(path) if path is not None else list(BUILTIN)
    if count is None:
        return pool
    if count < 1:
        raise PromptError(f"the number of prompts must be at least 1, got {count}")
    if count > len(pool):
        where = str(path) if path is not None else "the built-in list"
        raise PromptError(f"asked for {count} prompts, {where} has {len(pool)}")
    return pool[:count]


# Stands for the user's message while the chat template is rendered: a private-use character no template writes.
_MESSAGE = "\ue000"


def exact_length(model: Model, pool: Sequence[str], start: int, n_tokens: int) -> tuple[str, tuple[int, ...]]:
    """A chat prompt of exactly `n_tokens` ids, chat template included, and its user message.

    The message is pool[start] followed by the next prompts of the pool (cycling), joined
    by spaces and cut at a token boundary, so it is deterministic and the same ids go to
    every system. The ids are the template's ids before and after the message around the
    message's own ids; re-tokenizing the whole text may differ by a token at the seams.
    """
    from lljx.generation import encode_prompt

    rendered = model.chat.render([{"role": "user", "content": _MESSAGE}], add_generation_prompt=True)
    before, found, after = rendered.partition(_MESSAGE)
    if not found or _MESSAGE in after:
        raise PromptError("the chat template does not write the user's message once as given")
    head = encode_prompt(model, before, parse_special=True)
    tail = model.tokenizer.encode(after, parse_special=True)
    room = n_tokens - len(head) - len(tail)
    if room < 1:
        raise PromptError(f"{n_tokens} prompt tokens leave no room for a message: the chat template takes {len(head) + len(tail)}")
    words = len(pool)
    while True:
        message = model.tokenizer.encode(" ".join(pool[(start + i) % len(pool)] for i in range(words)))
        if len(message) >= room:
            break
        words *= 2
    body = message[:room]
    return model.tokenizer.decode(body), (*head, *body, *tail)
