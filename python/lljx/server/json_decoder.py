"""`format: "json"`: a Decoder whose tokens are picked on the host so the output is always one JSON object.

The device computes logits (jitted prefill and decode, compiled once per shape like any
strategy); the host reads them back and picks the most likely token (temperature 0) or
samples among the top candidates whose bytes keep the text a valid JSON prefix. When the
object is complete it returns no token (-1), which ends the Rust loop with "stop"; when the
budget gets short, only tokens that still leave room for the shortest completion are
allowed, and failing those the completion itself is forced. So the output always parses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljx.sampling import SamplerSettings
from lljx.server import json_prefix
from lljx.strategies.api import DecodePlan
from lljx.strategies.eager import pad_prompt
from lljx.strategies.steps import decode_logits, prefill_logits

if TYPE_CHECKING:
    from lljx.models import Model

NO_TOKEN = -1
GREEDY_WINDOW = 32  # candidates checked before sorting the whole vocabulary
UNCUT_WINDOW = 256  # candidates sampled from when top_k is 0 (the rest carry next to no mass)


class HostTokens(np.ndarray):
    """Token ids already on the host; `block_until_ready` is what the Rust loop calls before reading."""

    def block_until_ready(self) -> HostTokens:
        return self


def host_tokens(token: int) -> HostTokens:
    return np.array([[token]], dtype=np.int64).view(HostTokens)


class LogitsEngine:
    """Jitted prefill/decode returning logits, compiled ahead of time per shape; one per loaded model."""

    def __init__(self, model: Model) -> None:
        config = model.config
        self.params = model.params
        self._prefill_jit = jax.jit(partial(prefill_logits, config), static_argnums=(0,))
        # The cache (argument 2) is donated so XLA updates it in place.
        self._decode_jit = jax.jit(partial(decode_logits, config), donate_argnums=(2,))
        self._prefills: dict[tuple[int, int], Any] = {}
        self._decodes: dict[int, Any] = {}
        self.compile_seconds = 0.0
        tokenizer = model.tokenizer
        self.tokenizer = tokenizer
        self.token_bytes = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        # Special tokens (end of turn, BOS...) and empty pieces never belong inside the JSON text.
        self.banned = {i for i, piece in enumerate(self.token_bytes) if not piece} | set(tokenizer.special_ids)
        self.byte_tokens = {piece[0]: i for i, piece in enumerate(self.token_bytes) if len(piece) == 1}

    def prepare(self, plan: DecodePlan) -> None:
        key = (plan.prompt_bucket, plan.cache_len)
        if key in self._prefills and plan.cache_len in self._decodes:
            return
        start = time.perf_counter()
        ids = jax.ShapeDtypeStruct((1, plan.prompt_bucket), jnp.int32)
        lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
        if key not in self._prefills:
            self._prefills[key] = self._prefill_jit.lower(plan.cache_len, self.params, ids, lengths).compile()
        if plan.cache_len not in self._decodes:
            _, cache = jax.eval_shape(self._prefill_jit, plan.cache_len, self.params, ids, lengths)
            token = jax.ShapeDtypeStruct((1, 1), jnp.int32)
            self._decodes[plan.cache_len] = self._decode_jit.lower(self.params, token, cache, lengths).compile()
        self.compile_seconds += time.perf_counter() - start

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan) -> tuple[np.ndarray, Any, int]:
        self.prepare(plan)
        padded, lengths = pad_prompt(prompt_ids, plan)
        logits, cache = self._prefills[(plan.prompt_bucket, plan.cache_len)](self.params, padded, lengths)
        return np.asarray(logits)[0], cache, int(lengths[0])

    def decode(self, token: int, cache: Any, position: int, cache_len: int) -> tuple[np.ndarray, Any]:
        run = self._decodes[cache_len]
        logits, cache = run(
            self.params, np.array([[token]], np.int32), cache, np.array([position], np.int32)
        )
        return np.asarray(logits)[0], cache


@dataclass
class JsonChooser:
    """Picks each next token so the text stays a JSON prefix and can still be closed within the budget."""

    engine: LogitsEngine
    settings: SamplerSettings
    budget: int

    def __post_init__(self) -> None:
        self.state = json_prefix.INITIAL
        self.emitted = 0
        self.forced: list[int] = []
        self.rng = np.random.default_rng(self.settings.seed)

    def choose(self, logits: np.ndarray) -> int:
        if json_prefix.is_done(self.state) or self.emitted >= self.budget:
            return NO_TOKEN
        left_after = self.budget - self.emitted - 1
        token = self.forced.pop(0) if self.forced else self._pick(logits, left_after)
        if token is None:
            self.forced = self.completion_tokens(self.state)
            token = self.forced.pop(0)
        state = json_prefix.feed(self.state, self.engine.token_bytes[token])
        assert state is not None
        self.state = state
        self.emitted += 1
        return token

    def _pick(self, logits: np.ndarray, left_after: int) -> int | None:
        if self.settings.greedy:
            return self._first_valid(logits, left_after)
        k = self.settings.top_k or UNCUT_WINDOW
        window = top_indices(logits, min(k, logits.shape[0]))
        valid = [int(t) for t in window if self._allowed(int(t), left_after)]
        if not valid:
            return self._first_valid(logits, left_after)
        return self._sample(logits[valid], valid)

    def _first_valid(self, logits: np.ndarray, left_after: int) -> int | None:
        for token in top_indices(logits, min(GREEDY_WINDOW, logits.shape[0])):
            if self._allowed(int(token), left_after):
                return int(token)
        # Rare: nothing near the top fits, so walk the whole vocabulary in order.
        for token in np.argsort(-logits, kind="stable"):
            if self._allowed(int(token), left_after):
                return int(token)
        return None

    def _allowed(self, token: int, left_after: int) -> bool:
        if token in self.engine.banned:
            return False
        state = json_prefix.feed(self.state, self.engine.token_bytes[token])
        if state is None:
            return False
        rest = json_prefix.completion(state)
        # Bytes bound tokens from above, so the tokenizer is only asked when room is short.
        return len(rest) <= left_after or len(self.completion_tokens(state)) <= left_after

    def _sample(self, logits: np.ndarray, ids: list[int]) -> int:
        """Temperature, then top-p and min-p over the valid candidates (sorted by logit)."""
        scaled = logits.astype(np.float64) / max(self.settings.temperature, 1e-6)
        order = np.argsort(-scaled, kind="stable")
        scaled = scaled[order]
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
        mass_before = np.cumsum(probs) - probs
        keep = (mass_before < self.settings.top_p) | (self.settings.top_p >= 1)
        keep &= probs >= self.settings.min_p * probs[0]
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
        return ids[int(order[self.rng.choice(len(probs), p=probs)])]

    def completion_tokens(self, state: json_prefix.State) -> list[int]:
        """Token ids spelling the shortest completion: raw byte tokens for a split UTF-8 character, then text."""
        rest = json_prefix.completion(state)
        head = 0
        while head < len(rest) and rest[head] >= 0x80:
            head += 1
        return [self.engine.byte_tokens[b] for b in rest[:head]] + self.engine.tokenizer.encode(rest[head:].decode())


def top_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """The k largest logits' ids, largest first, without sorting the whole vocabulary."""
    part = np.argpartition(-logits, k - 1)[:k] if k < logits.shape[0] else np.arange(logits.shape[0])
    return part[np.argsort(-logits[part], kind="stable")]


class JsonStep(NamedTuple):
    """What prefill and decode hand the Rust loop: the chosen token, and where the device state is."""

    tokens: HostTokens
    cache: Any
    position: int
    cache_len: int


class JsonDecoder:
    """The Decoder contract over a LogitsEngine and a JsonChooser; one per request (the chooser has state)."""

    def __init__(self, engine: LogitsEngine, settings: SamplerSettings, budget: int) -> None:
        self.engine = engine
        self.chooser = JsonChooser(engine, settings, budget)

    @property
    def compile_seconds(self) -> float:
        return self.engine.compile_seconds

    def prepare(self, plan: DecodePlan, batch: int = 1) -> None:
        if batch != 1:
            raise ValueError("JSON-constrained decoding runs one sequence at a time")
        self.engine.prepare(plan)

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> JsonStep:
        del settings  # the chooser was made with this request's settings
        logits, cache, position = self.engine.prefill(prompt_ids, plan)
        return JsonStep(host_tokens(self.chooser.choose(logits)), cache, position, plan.cache_len)

    def decode(self, previous: JsonStep) -> JsonStep:
        token = int(previous.tokens[0, 0])
        if token == NO_TOKEN or json_prefix.is_done(self.chooser.state):
            return previous._replace(tokens=host_tokens(NO_TOKEN), cache=None)
        logits, cache = self.engine.decode(token, previous.cache, previous.position, previous.cache_len)
        return JsonStep(host_tokens(self.chooser.choose(logits)), cache, previous.position + 1, previous.cache_len)
