"""Strategy: an on-device loop emitting K tokens per dispatch, stopping early at end-of-sequence
(constrained generations run one token per dispatch through the split step)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core.kv_cache import KVCache
from lljx.params import Params
from lljx.sampling import Sampler, SamplerKnobs, SamplerSettings, make_sampler
from lljx.strategies.api import DecodeState
from lljx.strategies.batched import k_token_slots
from lljx.strategies.compiled import CompiledDecoder
from lljx.strategies.slots import SlotDecoder
from lljx.strategies.split import jitted_split
from lljx.strategies.steps import decode_step, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model

NO_TOKEN = -1  # fills the slots after a row's end-of-sequence token


def decode_k_tokens(
    config: ModelConfig, sample: Sampler, k: int, stop_ids: tuple[int, ...],
    params: Params, tokens: jax.Array, cache: KVCache, position: jax.Array, key: jax.Array, knobs: SamplerKnobs,
) -> DecodeState:
    """Up to k tokens per row in one `lax.while_loop`; it ends early once every row has stopped."""
    batch = tokens.shape[0]
    stops = jnp.asarray(stop_ids or (NO_TOKEN,), dtype=jnp.int32)

    def keep_going(carry) -> jax.Array:
        i, _, _, done = carry
        return (i < k) & ~jnp.all(done)

    def one_token(carry):
        i, out, state, done = carry
        state = decode_step(config, sample, params, *state)
        token = jnp.where(done, NO_TOKEN, state.tokens[:, 0])
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        return i + 1, out, state, done | jnp.isin(token, stops)

    start = DecodeState(tokens[:, -1:], cache, position, key, knobs)
    out = jnp.full((batch, k), NO_TOKEN, jnp.int32)
    # Rows that already ended (their newest token is a stop token, or none) generate nothing more.
    done = jnp.isin(tokens[:, -1], stops) | (tokens[:, -1] == NO_TOKEN)
    _, out, state, _ = jax.lax.while_loop(keep_going, one_token, (jnp.int32(0), out, start, done))
    return state._replace(tokens=out)


def prefill_padded(config: ModelConfig, sample: Sampler, k: int, cache_len: int, *args) -> DecodeState:
    """Prefill, with the first token in the last of k columns so every decode call sees one input shape."""
    state = prefill_step(config, sample, cache_len, *args)
    pad = jnp.full((state.tokens.shape[0], k - 1), NO_TOKEN, jnp.int32)
    return state._replace(tokens=jnp.concatenate([pad, state.tokens], axis=1))


class FusedLoop:
    name = "fused-loop"
    description = "an on-device while_loop emitting 8 tokens per dispatch, stopping early at end-of-sequence"
    tokens_per_dispatch = 8

    def build(
        self, model: Model, sampler: SamplerSettings, *, params: Params | None = None, config: ModelConfig | None = None,
        argmax: Callable[[jax.Array], jax.Array] | None = None,
    ) -> CompiledDecoder:
        """`params` and `config` replace the model's (e.g. weights routed to the native kernel, f32 activations);
        `argmax` replaces greedy sampling's `jnp.argmax`."""
        config = config or model.config
        sample = make_sampler(sampler, config.vocab_size, argmax=argmax)
        prefill = jax.jit(partial(prefill_padded, config, sample, self.tokens_per_dispatch), static_argnums=(0,))
        step = partial(decode_k_tokens, config, sample, self.tokens_per_dispatch, tuple(model.stop_token_ids))
        decode = jax.jit(step, donate_argnums=(2,))
        # A constrained generation needs each token's mask before the next is drawn, so it runs
        # one token per dispatch through the split step instead of the K-token loop.
        split = jitted_split(config, sample)
        return CompiledDecoder(model.params if params is None else params, sampler, prefill, decode, split)

    def build_slots(
        self, model: Model, *, params: Params | None = None, config: ModelConfig | None = None,
        argmax: Callable[[jax.Array], jax.Array] | None = None,
    ) -> SlotDecoder:
        """Slots decoding up to 8 tokens per row per dispatch (a row joins or leaves between dispatches)."""
        return k_token_slots(model, self.tokens_per_dispatch, params=params, config=config, argmax=argmax)


strategy = FusedLoop()
