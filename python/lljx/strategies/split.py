"""The decode step split in two for constrained generation: forward -> logits, then sample(logits, mask).

Between the halves the host computes the grammar's mask for the token being sampled, while
the device runs the forward pass; a strategy supplies the three functions (jitted where it
puts its jits), and the shared decoders (`CompiledDecoder`, `EagerDecoder`) drive them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import numpy as np

from lljx.config import ModelConfig
from lljx.sampling import Sampler
from lljx.strategies.api import DecodeState, LogitsState
from lljx.strategies.steps import forward_split, masked_sample, prefill_split


class SplitStep(NamedTuple):
    """prefill(cache_len, params, padded_ids, prompt_len, key, knobs) -> LogitsState;
    forward(params, tokens, cache, position, key, knobs) -> LogitsState;
    sample(logits, key, knobs, mask) -> (tokens [batch, 1], key)."""

    prefill: Callable[..., LogitsState]
    forward: Callable[..., LogitsState]
    sample: Callable[..., tuple[jax.Array, jax.Array]]


def jitted_split(config: ModelConfig, sample: Sampler, **layer_options: int) -> SplitStep:
    """One jit per half, the layers as the strategy's own decode step has them (`layer_options`)."""
    return SplitStep(
        prefill=jax.jit(partial(prefill_split, config, **layer_options), static_argnums=(0,)),
        # The cache (argument 2 after params and tokens) is donated, as in the whole decode step.
        forward=jax.jit(partial(forward_split, config, **layer_options), donate_argnums=(2,)),
        sample=jax.jit(partial(masked_sample, sample)),
    )


def eager_split(config: ModelConfig, sample: Sampler) -> SplitStep:
    """The same halves with no jit at all (every op dispatched on its own)."""
    return SplitStep(partial(prefill_split, config), partial(forward_split, config), partial(masked_sample, sample))


def require_split(split: SplitStep | None) -> SplitStep:
    """The decoder's split step; a decoder built without one cannot run constrained generations."""
    if split is None:
        raise ValueError("this strategy's decoder has no split step, so it cannot constrain a reply to a format")
    return split


def sampled(state: LogitsState, tokens: jax.Array | np.ndarray, key: jax.Array) -> DecodeState:
    """The state after the second half: the chosen tokens where the logits were."""
    return DecodeState(tokens, state.cache, state.position, key, state.knobs)


def all_allowed(batch: int, vocab_size: int) -> np.ndarray:
    """A mask that allows every token, for rows without a grammar and for warming up."""
    return np.full((batch, -(-vocab_size // 32)), 0xFFFFFFFF, dtype=np.uint32)
