"""Tokenizer recipes (not Tokenizers): read from a GGUF vocabulary or a file, built in one place, plus stop tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lljx.models.errors import ModelError
from lljx.models.gguf_file import GGUFFile, GGUFStrings

# Tokens that end a turn in the chat formats we meet (Llama 3, ChatML, Gemma, Phi); a model
# stops on whichever of these its vocabulary holds as a special token, besides its eos.
END_OF_TURN_TOKENS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end|>",
)

# llama.cpp token types: control and user-defined tokens are the specials.
SPECIAL_TOKEN_TYPES = (3, 4)


@dataclass(frozen=True, eq=False)
class GGUFVocab:
    """Vocabulary fields from a GGUF header, enough for Tokenizer.from_gguf_vocab."""

    model: str
    pre: str
    tokens: Sequence[str]
    merges: Sequence[str]
    token_types: Sequence[int]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool


@dataclass(frozen=True)
class TokenizerFile:
    """A tokenizer.json (or tiktoken tokenizer.model) next to the weights, with tokenizer_config.json's overrides."""

    path: str
    bos_token: str | None = None
    eos_token: str | None = None
    add_bos: bool | None = None  # None: whatever the file's post-processor says
    tiktoken_specials: tuple[str, ...] | None = None  # names of a tokenizer.model's special tokens (None: Llama 3.0's)


TokenizerSpec = GGUFVocab | TokenizerFile


def build_tokenizer(spec: TokenizerSpec) -> Any:
    """Construct lljx.tokenizer.Tokenizer from a spec; imported here so loading weights never needs it."""
    try:
        from lljx.tokenizer import Tokenizer
    except ImportError as e:  # the Rust extension is not built in this environment
        raise ModelError(f"the tokenizer is unavailable: {e}") from e
    if isinstance(spec, GGUFVocab):
        return Tokenizer.from_gguf_vocab(
            model=spec.model,
            pre=spec.pre,
            tokens=spec.tokens,
            merges=spec.merges,
            token_types=[int(t) for t in spec.token_types],
            bos_id=spec.bos_id,
            eos_id=spec.eos_id,
            add_bos=spec.add_bos,
        )
    return Tokenizer.from_file(
        spec.path, bos_token=spec.bos_token, eos_token=spec.eos_token, add_bos=spec.add_bos,
        tiktoken_specials=spec.tiktoken_specials,
    )  # fmt: skip


def stop_token_ids(eos_ids: Iterable[int | None], specials: dict[str, int]) -> tuple[int, ...]:
    """eos ids first (in order, deduplicated), then every end-of-turn special the vocabulary has."""
    out: list[int] = []
    for i in [*eos_ids, *(specials.get(t) for t in END_OF_TURN_TOKENS)]:
        if i is not None and i >= 0 and i not in out:
            out.append(int(i))
    return tuple(out)


def gguf_vocab(gf: GGUFFile) -> tuple[GGUFVocab, dict[str, int]]:
    """The tokenizer recipe and the special tokens (text -> id) of a GGUF vocabulary."""
    tokens = gf.fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, (list, GGUFStrings)) or not tokens or not all(isinstance(t, str) for t in tokens[:1]):
        raise gf.error("missing or malformed tokenizer.ggml.tokens")
    n = len(tokens)
    types = gf.fields.get("tokenizer.ggml.token_type")
    types = np.asarray(types, dtype=np.int64) if isinstance(types, np.ndarray) else np.ones(n, dtype=np.int64)
    if len(types) != n:
        raise gf.error(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    merges = gf.fields.get("tokenizer.ggml.merges", [])
    if not isinstance(merges, (list, GGUFStrings)):
        raise gf.error("tokenizer.ggml.merges is not a list of strings")
    model = gf.value("tokenizer.ggml.model", str)

    def token_id(key: str) -> int | None:
        value = gf.value(key, int, None)
        if value is not None and not 0 <= value < n:
            raise gf.error(f"{key} = {value} is outside the vocabulary of {n} tokens")
        return value

    vocab = GGUFVocab(
        model=model,
        pre=gf.value("tokenizer.ggml.pre", str, "default"),
        tokens=tokens,
        merges=merges,
        token_types=types.tolist(),
        bos_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_id=token_id("tokenizer.ggml.eos_token_id"),
        # llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones say so explicitly.
        add_bos=bool(gf.fields.get("tokenizer.ggml.add_bos_token", model == "llama")),
    )
    specials = {tokens[i]: i for i in np.flatnonzero(np.isin(types, SPECIAL_TOKEN_TYPES)).tolist()}
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if (i := token_id(key)) is not None:
            specials.setdefault(tokens[i], i)
    return vocab, specials
