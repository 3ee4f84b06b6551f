"""Pure step functions of batched decoding: B slots in one cache, prompts prefilled in chunks and inserted at a traced slot.

A strategy supplies its transform, `forward(params, tokens, positions, cache, last_index) ->
(logits, cache)` (`lljx.core.transformer.forward` with its own layer options, or a composition
of smaller jits); these functions build the slot steps around it, and the strategy jits them
where it puts its jits. Every row's position and sampler settings come from the host each step,
so one program serves any mix of requests, and a row's numbers never depend on the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core import kv_cache
from lljx.core.kv_cache import KVCache
from lljx.params import Params
from lljx.sampling import RowSampling, apply_token_mask

NO_TOKEN = -1  # a row's column with no token in it (a row that ended early, or is not running)

Transform = Callable[[Params, jax.Array, jax.Array, KVCache, jax.Array], tuple[jax.Array, KVCache]]
RowSampler = Callable[[jax.Array, RowSampling], jax.Array]


class SlotState(NamedTuple):
    """What the device holds between steps.

    tokens [B, k] are each row's newest tokens (NO_TOKEN where none; k is the strategy's tokens
    per step); cache is the batch's [B, L]; scratch [1, P] holds the prompt being prefilled and
    chunk_logits [1, vocab] the logits after its latest chunk; logits [B, vocab] are a split
    step's forward output, waiting for their masks; kept are scratches kept beside the one in
    use (None where empty), each an earlier prompt or finished reply for later prompts to start
    from.
    """

    tokens: jax.Array
    cache: KVCache
    scratch: KVCache | None = None
    chunk_logits: jax.Array | None = None
    logits: jax.Array | None = None
    kept: tuple[KVCache | None, ...] = ()


def empty_batch(config: ModelConfig, batch: int, cache_len: int, width: int, stacked: bool) -> tuple[jax.Array, KVCache]:
    """Tokens and a zeroed cache for `batch` free rows of `cache_len` positions."""
    return jnp.full((batch, width), NO_TOKEN, jnp.int32), kv_cache.create(config, batch, cache_len, stacked=stacked)


def empty_scratch(config: ModelConfig, bucket: int, stacked: bool) -> KVCache:
    """A one-row cache for a prompt of up to `bucket` tokens; reused by every prompt of that bucket
    (what an earlier prompt left past the current one's positions is masked by position)."""
    return kv_cache.create(config, 1, bucket, stacked=stacked)


def newest(tokens: jax.Array) -> jax.Array:
    """Each row's newest token [B, 1]; a row without one (ended, or free) feeds token 0, whose
    output nobody reads."""
    return jnp.maximum(tokens[:, -1:], 0)


def decode_logits(transform: Transform, params: Params, tokens: jax.Array, cache: KVCache, positions: jax.Array):
    """Every row's newest token in at its host-given position [B]; logits [B, vocab] for the next."""
    return transform(params, newest(tokens), positions[:, None], cache, jnp.zeros_like(positions))


def widen(column: jax.Array, width: int) -> jax.Array:
    """Tokens [B] as [B, width]: the token in the last column, NO_TOKEN before it."""
    if width == 1:
        return column[:, None]
    pad = jnp.full((column.shape[0], width - 1), NO_TOKEN, jnp.int32)
    return jnp.concatenate([pad, column[:, None]], axis=1)


def decode(
    transform: Transform, sample: RowSampler, params: Params, tokens: jax.Array, cache: KVCache,
    positions: jax.Array, active: jax.Array, rows: RowSampling,
) -> tuple[jax.Array, KVCache]:
    """One token per row [B, 1]; rows not `active` compute one nobody reads."""
    del active  # a per-token step's free rows write only into their own rows
    logits, cache = decode_logits(transform, params, tokens, cache, positions)
    return sample(logits, rows)[:, None], cache


def decode_k(
    transform: Transform, sample: RowSampler, k: int, stop_ids: tuple[int, ...], params: Params, tokens: jax.Array,
    cache: KVCache, positions: jax.Array, active: jax.Array, rows: RowSampling,
) -> tuple[jax.Array, KVCache]:
    """Up to k tokens per row [B, k] in one `lax.while_loop`, which ends once every row has stopped
    (a stop token, or not `active`); a stopped row's later columns are NO_TOKEN."""
    batch = tokens.shape[0]
    last_position = kv_cache_len(cache) - 1
    stops = jnp.asarray(stop_ids or (NO_TOKEN,), dtype=jnp.int32)

    def keep_going(carry) -> jax.Array:
        i, _, _, _, done = carry
        return (i < k) & ~jnp.all(done)

    def one_token(carry):
        i, out, last, cache, done = carry
        # A row past its budget runs on to the end of the dispatch; its extra tokens are dropped by
        # the host, and it never writes past the cache.
        at = jnp.minimum(positions + i, last_position)
        logits, cache = transform(params, last, at[:, None], cache, jnp.zeros_like(at))
        token = sample(logits, rows._replace(counters=rows.counters + i))
        out = jax.lax.dynamic_update_slice(out, jnp.where(done, NO_TOKEN, token)[:, None], (0, i))
        return i + 1, out, token[:, None], cache, done | jnp.isin(token, stops)

    out = jnp.full((batch, k), NO_TOKEN, jnp.int32)
    start = (jnp.int32(0), out, newest(tokens), cache, ~active)
    _, out, _, cache, _ = jax.lax.while_loop(keep_going, one_token, start)
    return out, cache


def kv_cache_len(cache: KVCache) -> int:
    return cache.max_len


def prefill_chunk(
    transform: Transform, params: Params, scratch: KVCache, ids: jax.Array, start: jax.Array, last: jax.Array
) -> tuple[jax.Array, KVCache]:
    """A chunk of a prompt [1, C] into the scratch cache at positions start..start+C; logits [1, vocab]
    after chunk position `last` (the prompt's last token when this chunk ends it)."""
    positions = (start + jnp.arange(ids.shape[1], dtype=jnp.int32))[None]
    return transform(params, ids, positions, scratch, last[None])


def prefill_rows(
    transform: Transform, params: Params, scratches: tuple[KVCache, ...], ids: jax.Array, starts: jax.Array,
    lasts: jax.Array,
) -> tuple[tuple[jax.Array, ...], tuple[KVCache, ...]]:
    """Several prompts' chunks [n, C] at once, each into its own scratch [1, P] at positions
    starts[i]..starts[i]+C: each row's logits [1, vocab] after its position lasts[i], and its
    scratch. One pass reads the weights once for all n prompts; every row's numbers are those
    of `prefill_chunk` on it alone (the kernels' sums do not depend on the rows beside it)."""
    positions = starts[:, None] + jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
    logits, cache = transform(params, ids, positions, stack_rows(scratches), lasts)
    n = len(scratches)
    return tuple(logits[i : i + 1] for i in range(n)), split_rows(cache, n)


def stack_rows(scratches: tuple[KVCache, ...]) -> KVCache:
    """One-row caches as one cache of len(scratches) rows, in order."""
    if isinstance(scratches[0].k, tuple):
        return KVCache(
            tuple(jnp.concatenate(layer, axis=0) for layer in zip(*(s.k for s in scratches))),
            tuple(jnp.concatenate(layer, axis=0) for layer in zip(*(s.v for s in scratches))),
        )
    return KVCache(jnp.concatenate([s.k for s in scratches], axis=1), jnp.concatenate([s.v for s in scratches], axis=1))


def split_rows(cache: KVCache, n: int) -> tuple[KVCache, ...]:
    """A cache of n rows as n one-row caches."""
    if isinstance(cache.k, tuple):
        return tuple(KVCache(tuple(k[i : i + 1] for k in cache.k), tuple(v[i : i + 1] for v in cache.v)) for i in range(n))
    return tuple(KVCache(cache.k[:, i : i + 1], cache.v[:, i : i + 1]) for i in range(n))


def insert_rows(cache: KVCache, scratch: KVCache, slot: jax.Array) -> KVCache:
    """The scratch's prompt [1, P] copied into row `slot` of the batch's cache [B, L] (P <= L);
    the row's older positions past P stay, masked by position until decoding overwrites them."""
    def put(big: jax.Array, row: jax.Array, axis: int) -> jax.Array:
        index = [0] * big.ndim
        index[axis] = slot
        return jax.lax.dynamic_update_slice(big, row.astype(big.dtype), tuple(index))

    if isinstance(cache.k, tuple):
        ks = tuple(put(k, r, 0) for k, r in zip(cache.k, scratch.k))
        vs = tuple(put(v, r, 0) for v, r in zip(cache.v, scratch.v))
        return KVCache(ks, vs)
    return KVCache(put(cache.k, scratch.k, 1), put(cache.v, scratch.v, 1))  # stacked: layers first


def extract_row(cache: KVCache, slot: jax.Array) -> KVCache:
    """Row `slot` of the batch's cache [B, L] as a one-row cache [1, L] (a scratch)."""
    def take(big: jax.Array, axis: int) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(big, slot, 1, axis=axis)

    if isinstance(cache.k, tuple):
        return KVCache(tuple(take(k, 0) for k in cache.k), tuple(take(v, 0) for v in cache.v))
    return KVCache(take(cache.k, 1), take(cache.v, 1))  # stacked: layers first


@jax.jit
def copy_scratch(scratch: KVCache) -> KVCache:
    """A scratch in buffers of its own: a prompt prefilled into it (which donates them) leaves
    the one it copies as it was."""
    return jax.tree.map(jnp.copy, scratch)


def place(tokens: jax.Array, slot: jax.Array, token: jax.Array) -> jax.Array:
    """Row `slot` of tokens [B, k] becomes [NO_TOKEN, ..., token]."""
    row = widen(token.reshape(1), tokens.shape[1])
    return jax.lax.dynamic_update_slice(tokens, row, (slot, jnp.int32(0)))


def insert(
    sample: RowSampler, tokens: jax.Array, cache: KVCache, scratch: KVCache, chunk_logits: jax.Array,
    slot: jax.Array, row: RowSampling,
) -> tuple[jax.Array, KVCache]:
    """A prefilled prompt joins the batch at `slot`, with its first token drawn under `row` [1]."""
    token = sample(chunk_logits, row)
    return place(tokens, slot, token[0]), insert_rows(cache, scratch, slot)


def insert_logits(
    logits: jax.Array, cache: KVCache, scratch: KVCache, chunk_logits: jax.Array, slot: jax.Array
) -> tuple[jax.Array, KVCache]:
    """The split step's insert: the prompt's logits join the batch's [B, vocab], to be sampled under masks."""
    logits = jax.lax.dynamic_update_slice(logits, chunk_logits.astype(logits.dtype), (slot, jnp.int32(0)))
    return logits, insert_rows(cache, scratch, slot)


def sample_masked(sample: RowSampler, width: int, logits: jax.Array, rows: RowSampling, mask: jax.Array) -> jax.Array:
    """The split step's second half: each row's token [B, width] among those its packed mask allows."""
    return widen(sample(apply_token_mask(logits, mask), rows), width)


def resize(tokens: jax.Array, cache: KVCache, source_rows: jax.Array, cache_len: int) -> tuple[jax.Array, KVCache]:
    """The batch with new rows [len(source_rows)], row i taken from old row source_rows[i], and
    every cache padded or cut to `cache_len` positions (a grown batch's new rows are free: their
    source is any row; a shorter cache still holds every position its rows have filled)."""
    def one(k: jax.Array, axis_rows: int, axis_len: int) -> jax.Array:
        taken = jnp.take(k, source_rows, axis=axis_rows)
        if cache_len <= taken.shape[axis_len]:
            return jax.lax.slice_in_dim(taken, 0, cache_len, axis=axis_len)
        pad = [(0, 0)] * taken.ndim
        pad[axis_len] = (0, cache_len - taken.shape[axis_len])
        return jnp.pad(taken, pad)

    tokens = jnp.take(tokens, source_rows, axis=0)
    if isinstance(cache.k, tuple):
        return tokens, KVCache(tuple(one(k, 0, 2) for k in cache.k), tuple(one(v, 0, 3) for v in cache.v))
    return tokens, KVCache(one(cache.k, 1, 3), one(cache.v, 1, 4))


def resize_into(tokens: jax.Array, cache: KVCache, source_rows: jax.Array, spare: KVCache) -> tuple[jax.Array, KVCache]:
    """`resize` to the spare cache's length. The spare is only read for its shape: jitted with
    it donated (and kept though unused), the new cache is written into the spare's buffers."""
    return resize(tokens, cache, source_rows, spare.max_len)
