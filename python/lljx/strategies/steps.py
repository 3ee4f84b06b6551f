"""Pure step functions the built-in strategies jit in different places: transform, sample, prefill, decode,
and the split step of constrained generation (forward -> logits, then a masked sample)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core import kv_cache, transformer
from lljx.params import Params
from lljx.sampling import Sampler, SamplerKnobs, apply_token_mask
from lljx.strategies.api import DecodeState, LogitsState


def prefill_logits(
    config: ModelConfig, cache_len: int, params: Params, padded_ids: jax.Array, prompt_len: jax.Array,
    **layer_options: int,
) -> tuple[jax.Array, kv_cache.KVCache]:
    """Run a right-padded prompt [batch, bucket] through a fresh cache; logits at each row's last token.

    layer_options (scan_layers, scan_unroll) pass through to `transformer.forward`.
    """
    batch, bucket = padded_ids.shape
    positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (batch, bucket))
    # Every key of the prompt sits below `bucket`: its attention spans that many positions, not
    # the whole cache (a 512-token prompt in a 1024-position cache did twice the work), and
    # the cache widens to cache_len afterwards.
    width = min(bucket, cache_len)
    cache = kv_cache.create(config, batch, width, stacked=bool(layer_options.get("scan_layers")))
    logits, cache = transformer.forward(config, params, padded_ids, positions, cache, prompt_len - 1, **layer_options)
    return logits, kv_cache.widen(cache, cache_len)


def decode_logits(
    config: ModelConfig, params: Params, tokens: jax.Array, cache: kv_cache.KVCache, position: jax.Array,
    **layer_options: int,
) -> tuple[jax.Array, kv_cache.KVCache]:
    """Feed the newest token of each row at its position; logits for the token after it."""
    return transformer.forward(
        config, params, tokens[:, -1:], position[:, None], cache, jnp.zeros_like(position), **layer_options
    )


def initial_key(seed: int) -> jax.Array:
    """The sampler key a generation starts from, as raw key data (uint32), the form decode states carry:
    a typed key would be re-wrapped in Python on every call's output, about 0.3 ms per token."""
    return jax.random.key_data(jax.random.key(seed))


def sample_next(sample: Sampler, logits: jax.Array, key: jax.Array, knobs: SamplerKnobs) -> tuple[jax.Array, jax.Array]:
    """One token per row [batch, 1] and the key to use next, in the form `key` came in (raw data or typed)."""
    raw = not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    key, step_key = jax.random.split(jax.random.wrap_key_data(key) if raw else key)
    return sample(logits, step_key, knobs)[:, None], jax.random.key_data(key) if raw else key


def prefill_step(
    config: ModelConfig, sample: Sampler, cache_len: int, params: Params, padded_ids: jax.Array,
    prompt_len: jax.Array, key: jax.Array, knobs: SamplerKnobs, **layer_options: int,
) -> DecodeState:
    """Prefill and sample the first token."""
    logits, cache = prefill_logits(config, cache_len, params, padded_ids, prompt_len, **layer_options)
    token, key = sample_next(sample, logits, key, knobs)
    return DecodeState(token, cache, prompt_len.astype(jnp.int32), key, knobs)


def decode_step(
    config: ModelConfig, sample: Sampler, params: Params, tokens: jax.Array, cache: kv_cache.KVCache,
    position: jax.Array, key: jax.Array, knobs: SamplerKnobs, **layer_options: int,
) -> DecodeState:
    """Decode one token per row."""
    logits, cache = decode_logits(config, params, tokens, cache, position, **layer_options)
    token, key = sample_next(sample, logits, key, knobs)
    return DecodeState(token, cache, position + 1, key, knobs)


def prefill_split(
    config: ModelConfig, cache_len: int, params: Params, padded_ids: jax.Array, prompt_len: jax.Array,
    key: jax.Array, knobs: SamplerKnobs, **layer_options: int,
) -> LogitsState:
    """Prefill without sampling: the logits the first token is drawn from once its mask is known."""
    logits, cache = prefill_logits(config, cache_len, params, padded_ids, prompt_len, **layer_options)
    return LogitsState(logits, cache, prompt_len.astype(jnp.int32), key, knobs)


def forward_split(
    config: ModelConfig, params: Params, tokens: jax.Array, cache: kv_cache.KVCache, position: jax.Array,
    key: jax.Array, knobs: SamplerKnobs, **layer_options: int,
) -> LogitsState:
    """The first half of a decode step: the newest token in, logits out."""
    logits, cache = decode_logits(config, params, tokens, cache, position, **layer_options)
    return LogitsState(logits, cache, position + 1, key, knobs)


def masked_sample(
    sample: Sampler, logits: jax.Array, key: jax.Array, knobs: SamplerKnobs, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The second half: one token per row [batch, 1] among those the mask allows, and the next key."""
    return sample_next(sample, apply_token_mask(logits, mask), key, knobs)
