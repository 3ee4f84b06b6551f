"""A decoder whose prefill and decode are Python compositions of smaller jitted pieces (or none at all).

They cannot be lowered as one program, so `prepare` compiles by running each new shape
once on a dummy prompt; jax's own cache then keys later calls by shape, so a prompt in a
seen bucket never recompiles. The split step of constrained generation is prepared the same
way, only when a constrained generation needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from lljx.params import Params
from lljx.sampling import SamplerSettings
from lljx.strategies.api import DecodePlan, DecodeState, LogitsState
from lljx.strategies.split import SplitStep, all_allowed, require_split, sampled
from lljx.strategies.steps import initial_key

PrefillFn = Callable[[int, Params, np.ndarray, np.ndarray, jax.Array, object], DecodeState]
DecodeFn = Callable[..., DecodeState]


class EagerDecoder:
    """Runs `prefill(cache_len, params, padded_ids, prompt_len, key, knobs)` and `decode(params, *state)`,
    and for constrained generation the three functions of `split`."""

    def __init__(
        self, params: Params, sampler: SamplerSettings, prefill: PrefillFn, decode: DecodeFn,
        split: SplitStep | None = None,
    ) -> None:
        self.params = params
        self.settings = sampler
        self._prefill = prefill
        self._decode = decode
        self._split = split
        self._prepared: set[tuple[int, int, int, bool]] = set()
        self.compile_seconds = 0.0

    def prepare(self, plan: DecodePlan, batch: int = 1, *, masked: bool = False) -> None:
        signature = (batch, plan.prompt_bucket, plan.cache_len, masked)
        if signature in self._prepared:
            return
        start = time.perf_counter()
        dummy = np.zeros((batch, 1), np.int32)
        if masked:
            logits = self.prefill_logits(dummy, plan)
            mask = all_allowed(batch, logits.logits.shape[-1])
            jax.block_until_ready(self.sample(self.forward(self.sample(logits, mask)), mask).tokens)
        else:
            jax.block_until_ready(self.decode(self.prefill(dummy, plan)).tokens)
        self.compile_seconds += time.perf_counter() - start
        self._prepared.add(signature)

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> DecodeState:
        settings = check_structure(self.settings, settings)
        padded, lengths = pad_prompt(prompt_ids, plan)
        return self._prefill(plan.cache_len, self.params, padded, lengths, initial_key(settings.seed), settings.knobs())

    def decode(self, previous: DecodeState) -> DecodeState:
        return self._decode(self.params, *previous)

    def prefill_logits(
        self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None
    ) -> LogitsState:
        settings = check_structure(self.settings, settings)
        padded, lengths = pad_prompt(prompt_ids, plan)
        key, knobs = initial_key(settings.seed), settings.knobs()
        return require_split(self._split).prefill(plan.cache_len, self.params, padded, lengths, key, knobs)

    def forward(self, previous: DecodeState) -> LogitsState:
        return require_split(self._split).forward(self.params, *previous)

    def sample(self, state: LogitsState, mask: np.ndarray) -> DecodeState:
        tokens, key = require_split(self._split).sample(state.logits, state.key, state.knobs, mask)
        return sampled(state, tokens, key)

    def force(self, state: LogitsState, tokens: np.ndarray) -> DecodeState:
        return sampled(state, tokens, state.key)


def check_structure(built: SamplerSettings, requested: SamplerSettings | None) -> SamplerSettings:
    """The settings for one generation; only seed and knobs may differ from the build's."""
    if requested is None:
        return built
    if requested.structure != built.structure:
        raise ValueError(
            f"this decoder was built for greedy={built.greedy}, top_k={built.top_k}; "
            f"build another for greedy={requested.greedy}, top_k={requested.top_k}"
        )
    return requested


def pad_prompt(prompt_ids: np.ndarray, plan: DecodePlan) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad prompt rows to the plan's bucket; returns (padded ids, lengths)."""
    ids = np.atleast_2d(np.asarray(prompt_ids, dtype=np.int32))
    padded = np.zeros((ids.shape[0], plan.prompt_bucket), dtype=np.int32)
    padded[:, : ids.shape[1]] = ids
    return padded, np.full((ids.shape[0],), ids.shape[1], dtype=np.int32)
