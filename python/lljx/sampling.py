"""Token sampling on device: small pure filters over logits, composed by `make_sampler`.

Temperature 0 is greedy argmax. Otherwise logits are divided by the temperature, cut to the
top k with `lax.top_k` (never a full sort of the vocabulary when k is set), then top-p and
min-p mask the remaining candidates with -inf, and one is drawn with the step's key.
A grammar's token mask (`apply_token_mask`) comes before all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SamplerKnobs(NamedTuple):
    """The continuous sampler settings, passed as device scalars so changing them never recompiles."""

    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array


Sampler = Callable[[jax.Array, jax.Array, SamplerKnobs], jax.Array]


class SamplingError(ValueError):
    """A sampler setting is out of range."""


@dataclass(frozen=True)
class SamplerSettings:
    """What `make_sampler` builds from; hashable so it can be static under jit.

    top_k = 0 means no top-k cut; top_p = 1 and min_p = 0 disable those filters.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SamplingError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise SamplingError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0 <= self.min_p <= 1):
            raise SamplingError(f"min_p must be in [0, 1], got {self.min_p}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (0 <= self.seed < 2**63):
            raise SamplingError(f"seed must be an integer in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def structure(self) -> tuple[bool, int]:
        """What a compiled sampler depends on: greedy or not, and the top-k width."""
        return (self.greedy, 0 if self.greedy else self.top_k)

    def knobs(self) -> SamplerKnobs:
        return SamplerKnobs(np.float32(max(self.temperature, 1e-6)), np.float32(self.top_p), np.float32(self.min_p))


def apply_top_p(sorted_logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
    """Keep the smallest prefix of descending logits whose probability mass reaches top_p (1 keeps all)."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where((mass_before < top_p) | (top_p >= 1), sorted_logits, -jnp.inf)


def apply_min_p(sorted_logits: jax.Array, min_p: jax.Array | float) -> jax.Array:
    """Drop candidates whose probability is below min_p times the most likely one's (0 keeps all)."""
    threshold = sorted_logits[..., :1] + jnp.log(min_p)
    return jnp.where(sorted_logits >= threshold, sorted_logits, -jnp.inf)


def unpack_token_mask(mask: jax.Array, vocab_size: int) -> jax.Array:
    """Packed bitsets [batch, words] uint32 (bit t%32 of word t/32 allows token t) -> bool [batch, vocab]."""
    shifts = jnp.arange(32, dtype=jnp.uint32)
    bits = (mask.astype(jnp.uint32)[:, :, None] >> shifts) & jnp.uint32(1)
    return bits.reshape(mask.shape[0], -1)[:, :vocab_size].astype(bool)


def apply_token_mask(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Disallowed tokens' logits become -inf, so no filter or draw after this can pick them."""
    with jax.named_scope("token_mask"):
        return jnp.where(unpack_token_mask(mask, logits.shape[-1]), logits, -jnp.inf)


def mask_words(vocab_size: int) -> int:
    """The u32 words of one row's token mask."""
    return -(-vocab_size // 32)


def greedy(logits: jax.Array, key: jax.Array, knobs: SamplerKnobs) -> jax.Array:
    del key, knobs  # greedy needs neither; the signature matches the other samplers
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def make_sampler(
    settings: SamplerSettings, vocab_size: int, *, argmax: Callable[[jax.Array], jax.Array] | None = None
) -> Sampler:
    """A pure function (logits [batch, vocab] f32, key, knobs) -> token ids [batch] int32.

    Only `settings.structure` shapes the function; temperature, top-p and min-p arrive as knobs.
    `argmax` replaces `jnp.argmax` in greedy sampling (the native strategies pass their kernel's).
    """
    if settings.greedy:
        if argmax is None:
            return greedy

        def greedy_with(logits: jax.Array, key: jax.Array, knobs: SamplerKnobs) -> jax.Array:
            del key, knobs
            return argmax(logits).astype(jnp.int32)

        return greedy_with
    k = vocab_size if settings.top_k == 0 else min(settings.top_k, vocab_size)

    def sample(logits: jax.Array, key: jax.Array, knobs: SamplerKnobs) -> jax.Array:
        with jax.named_scope("sample"):
            scaled = logits.astype(jnp.float32) / knobs.temperature
            candidates, candidate_ids = jax.lax.top_k(scaled, k)
            candidates = apply_min_p(apply_top_p(candidates, knobs.top_p), knobs.min_p)
            choice = jax.random.categorical(key, candidates, axis=-1)
            return jnp.take_along_axis(candidate_ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    return sample


# ---- Per-row sampling for batched decoding (slots): every row its own settings and key ----

# top-k needs a static width under jit; rows share this one and cut to their own k by rank.
# A row with top_k 0 (no cut) or above the cap keeps the cap's most likely tokens. Measured
# on 2 cores: lax.top_k at 256 costs 1.2 ms for 8 rows of a 49k vocabulary (5 ms at 128k),
# against 0.6 ms (1.5 ms) at 64; only batches with a sampled row pay it (see `sample_rows`).
TOP_K_CAP = 256


class RowSampling(NamedTuple):
    """Sampler settings per row [rows], as arrays, so mixed requests share one compiled program.

    `keys` [rows, 2] are each request's raw PRNG key data (from its seed) and `counters` which
    token of its reply a row draws: a row's random bits come from `fold_in(key, counter)`,
    so they do not depend on the batch it shares. temperature 0 is greedy.
    """

    keys: jax.Array  # uint32 [rows, 2]
    counters: jax.Array  # int32 [rows]
    temperature: jax.Array  # f32 [rows]
    top_k: jax.Array  # int32 [rows]; 0: no cut (the cap)
    top_p: jax.Array  # f32 [rows]
    min_p: jax.Array  # f32 [rows]


def seed_key_data(seed: int) -> np.ndarray:
    """A request's raw key data [2] uint32 for `RowSampling.keys`: the key of the seed's low 32
    bits, with its high 32 bits folded in (jax would otherwise truncate a 64-bit seed here)."""
    key = jax.random.key(seed & 0xFFFFFFFF)
    if seed >> 32:
        key = jax.random.fold_in(key, seed >> 32)
    return np.asarray(jax.random.key_data(key), dtype=np.uint32)


def sample_rows(
    logits: jax.Array, rows: RowSampling, *, argmax: Callable[[jax.Array], jax.Array] | None = None,
    cap: int = TOP_K_CAP,
) -> jax.Array:
    """One token per row [rows] int32, each row under its own settings; a row's token depends only on
    its own logits and settings. Greedy rows take the argmax; the sampled branch runs only when
    some row samples, so an all-greedy batch pays for the argmax alone."""
    logits = logits.astype(jnp.float32)
    best = (argmax or (lambda x: jnp.argmax(x, axis=-1)))(logits).astype(jnp.int32)
    sampled = rows.temperature > 0
    k = min(cap, logits.shape[-1])

    def draw(_: None) -> jax.Array:
        with jax.named_scope("sample_rows"):
            scaled = logits / jnp.maximum(rows.temperature, 1e-6)[:, None]
            candidates, candidate_ids = jax.lax.top_k(scaled, k)
            width = jnp.where((rows.top_k <= 0) | (rows.top_k > k), k, rows.top_k)
            candidates = jnp.where(jnp.arange(k)[None, :] < width[:, None], candidates, -jnp.inf)
            candidates = apply_min_p(apply_top_p(candidates, rows.top_p[:, None]), rows.min_p[:, None])

            def one(key: jax.Array, counter: jax.Array, row: jax.Array) -> jax.Array:
                return jax.random.categorical(jax.random.fold_in(jax.random.wrap_key_data(key), counter), row)

            choice = jax.vmap(one)(rows.keys, rows.counters, candidates)
            drawn = jnp.take_along_axis(candidate_ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
            return jnp.where(sampled, drawn, best)

    return jax.lax.cond(jnp.any(sampled), draw, lambda _: best, None)
