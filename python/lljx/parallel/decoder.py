"""A strategy's decoder on a CPU mesh: each call waits for the device work it builds on before dispatching.

XLA:CPU runs every forced host device's share of a program on one shared thread pool, and a
share that reaches an all-reduce holds its thread until every device's share arrives. With
two collective programs in flight (the token loop dispatches step n+1 before reading step
n; fused-loop's 8-token loop; jit-layer's program per layer) the pool can fill with shares
of different programs waiting on each other, and the run hangs (seen with 2 and 4 devices
on 2 cores). Waiting for a call's input state first keeps one collective program in flight
at a time: on CPU a mesh is for correctness, and the wait costs the loop its one-step
overlap. Accelerators keep the plain decoder.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lljx.sampling import SamplerSettings
from lljx.strategies.api import DecodePlan, Decoder, DecodeState, LogitsState


class OneAtATime:
    """Wraps any Decoder; everything else (compile_seconds, params, prepare_prefill_first...) is the wrapped one's."""

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner
        self._last: Any = None  # the newest state handed out: a new generation waits for it

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _settle(self, *pending: Any) -> None:
        live = [x for x in jax.tree.leaves((pending, self._last)) if isinstance(x, jax.Array) and not x.is_deleted()]
        jax.block_until_ready(live)  # a frame profiles count as waiting for the device
        self._last = None

    def _keep(self, state: Any) -> Any:
        self._last = state
        return state

    def prepare(self, plan: DecodePlan, batch: int = 1, *, masked: bool = False) -> None:
        self._settle()  # some decoders prepare by running a dummy prompt
        self.inner.prepare(plan, batch, masked=masked)

    def adopt_programs(self, early: Any) -> bool:
        return bool(self.inner.adopt_programs(getattr(early, "inner", early)))  # type: ignore[attr-defined]

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> DecodeState:
        self._settle()
        return self._keep(self.inner.prefill(prompt_ids, plan, settings))

    def decode(self, previous: DecodeState) -> DecodeState:
        self._settle(previous)
        return self._keep(self.inner.decode(previous))

    def prefill_logits(
        self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None
    ) -> LogitsState:
        self._settle()
        return self._keep(self.inner.prefill_logits(prompt_ids, plan, settings))

    def forward(self, previous: DecodeState) -> LogitsState:
        self._settle(previous)
        return self._keep(self.inner.forward(previous))

    def sample(self, state: LogitsState, mask: np.ndarray) -> DecodeState:
        self._settle(state)
        return self._keep(self.inner.sample(state, mask))

    def force(self, state: LogitsState, tokens: np.ndarray) -> DecodeState:
        return self._keep(self.inner.force(state, tokens))
