"""llama.cpp (through llama-cpp-python) as the independent oracle for logits, greedy tokens and token ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lljx.bench.llamacpp_load import Llama
from lljx.bench.requantize import requantized

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[test]')")


def cache_dir() -> Path:
    root = Path(os.environ.get("LLJX_TEST_CACHE", Path.home() / ".cache" / "lljx-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def requantize_f32(source: Path) -> Path:
    """The same weights as an F32 GGUF, written by llama.cpp's own quantizer (the bench's conversion), cached."""
    return requantized(source, "F32", cache=cache_dir())


def load(path: Path, n_ctx: int = 512, *, logits_all: bool = False):
    """llama.cpp on `path`, with its default f16 KV cache, as lljx's kernels keep theirs."""
    return Llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=logits_all, verbose=False, seed=0)


def all_logits(llm, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of tokens, [len(tokens), vocab]."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def greedy_tokens(llm, tokens: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy continuation (its sampler at temperature 0), stopping at end of generation."""
    llm.reset()
    out: list[int] = []
    for token in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        out.append(token)
        if len(out) >= n:
            break
    return out


def assert_greedy_agrees(llm, tokens: list[int], ours: list[int], n: int, *, near_tie: float) -> None:
    """Our greedy tokens equal llama.cpp's, or first differ where llama.cpp's own logits nearly tie.

    On files whose activations both engines round to 8 bits, a difference in the last bit of one
    activation (the order of a float sum, which differs between CPUs and builds) can move a value
    across a rounding boundary, and the logits by a few hundredths: where llama.cpp's best two
    tokens are that close, either is right. `near_tie` bounds llama.cpp's margin of its own token
    over ours at the first difference; a wrong kernel moves logits by far more.
    """
    # Without logits_all, llama-cpp-python leaves the scores it keeps at zero, and every margin
    # would read 0: the check could not fail.
    assert llm._logits_all, "load llama.cpp with logits_all=True to compare greedy tokens"
    theirs = greedy_tokens(llm, tokens, n)
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if first is None:
        assert len(ours) == len(theirs), (ours, theirs)
        return
    prefix = tokens + theirs[:first]
    llm.reset()
    llm.eval(prefix)
    row = np.asarray(llm.scores[len(prefix) - 1], dtype=np.float32)
    assert np.any(row), "llama.cpp returned no logits for the prefix"
    margin = float(row[theirs[first]] - row[ours[first]])
    assert margin <= near_tie, (
        f"token {first}: llama.cpp prefers {theirs[first]} over our {ours[first]} by {margin:.4f} (> {near_tie})"
    )
