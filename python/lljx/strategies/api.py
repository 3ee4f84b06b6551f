"""The strategy contract: a named recipe that builds a Decoder, which only dispatches device work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import jax
import numpy as np

from lljx.core.kv_cache import KVCache
from lljx.sampling import SamplerKnobs, SamplerSettings

if TYPE_CHECKING:
    from lljx.models import Model


class DecodeState(NamedTuple):
    """What one prefill or decode call leaves on the device.

    tokens [batch, k] holds the k newest token ids (k is 1 for per-token strategies);
    position [batch] is where the next token will be written in the cache; key is the sampler's
    PRNG key as raw uint32 data (`steps.initial_key`); knobs are the sampler's continuous
    settings, carried so one compiled decoder serves any values.
    """

    tokens: jax.Array
    cache: KVCache
    position: jax.Array
    key: jax.Array
    knobs: SamplerKnobs


class LogitsState(NamedTuple):
    """A forward pass's result before sampling (the first half of a split decode step).

    logits [batch, vocab] are for the token after each row's newest; position [batch] is
    where that token will be written; cache, key and knobs are carried as in DecodeState.
    """

    logits: jax.Array
    cache: KVCache
    position: jax.Array
    key: jax.Array
    knobs: SamplerKnobs


@dataclass(frozen=True)
class DecodePlan:
    """Static shapes for one generation: the padded prompt length and the cache length."""

    prompt_len: int
    cache_len: int

    @property
    def prompt_bucket(self) -> int:
        return bucket_length(self.prompt_len, self.cache_len)


class Decoder(Protocol):
    """Dispatches prefill and decode steps; never reads values back to the host.

    Constrained generation (a grammar's token mask per step) runs the split step instead of
    `decode`: `forward` -> logits, then `sample(logits, mask)`, so the host computes step
    n+1's mask while the device runs its forward pass; `force` takes tokens the grammar
    allowed alone, without sampling. A decoder built with the shared builders
    (`per_token_decoder`, `CompiledDecoder`, `EagerDecoder`) has all of it.
    """

    compile_seconds: float

    def prepare(self, plan: DecodePlan, batch: int = 1, *, masked: bool = False) -> None:
        """Compile ahead of time what `plan` needs (`masked`: the split step's programs), so no
        compile happens inside a timed run."""
        ...

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> DecodeState:
        """Start a generation; `settings` may change seed and knobs, not `structure`, from the build's."""
        ...

    def decode(self, previous: DecodeState) -> DecodeState: ...

    def prefill_logits(
        self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None
    ) -> LogitsState:
        """Start a constrained generation: the prompt's forward pass, nothing sampled yet."""
        ...

    def forward(self, previous: DecodeState) -> LogitsState:
        """Feed each row's newest token; logits for the one after it."""
        ...

    def sample(self, state: LogitsState, mask: np.ndarray) -> DecodeState:
        """One token per row under a packed token mask [batch, ceil(vocab/32)] uint32."""
        ...

    def force(self, state: LogitsState, tokens: np.ndarray) -> DecodeState:
        """Take tokens [batch, 1] int32 as the next ones without sampling (the key is not advanced)."""
        ...


class Strategy(Protocol):
    """A named recipe for decoders. A strategy that serves many requests at once also has
    `build_slots(model) -> lljx.strategies.slots.SlotDecoder` (see `lljx.strategies.batched`);
    one without it is served one request at a time."""

    name: str
    description: str

    def build(self, model: Model, sampler: SamplerSettings) -> Decoder: ...


MIN_BUCKET = 16


def bucket_length(n: int, limit: int) -> int:
    """The next power of two >= n (at least MIN_BUCKET), capped at limit, so few shapes ever compile."""
    bucket = MIN_BUCKET
    while bucket < n:
        bucket *= 2
    return min(bucket, limit)


def plan_for(prompt_len: int, max_tokens: int, context_length: int) -> DecodePlan:
    """Cache length bucketed from prompt + budget, so attention spans what this request can fill."""
    needed = min(prompt_len + max_tokens, context_length)
    return DecodePlan(prompt_len=prompt_len, cache_len=bucket_length(max(needed, 256), context_length))
