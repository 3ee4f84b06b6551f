"""Model + strategy + token loop -> streamed text chunks and timing Stats."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lljx.strategies.api import Decoder, plan_for

if TYPE_CHECKING:
    from lljx.models import Model


class GenerationError(ValueError):
    """A request that cannot run: empty prompt, no token budget, prompt past the context."""


@dataclass
class Stats:
    """Timings of one generation in nanoseconds, in the units Ollama reports."""

    prompt_tokens: int = 0
    compile_ns: int = 0
    gen_tokens: int = 0
    # Tokens read back, counting a final end-of-sequence token that is not emitted.
    tokens_read: int = 0
    ttft_ns: int = 0
    prefill_ns: int = 0
    decode_ns: int = 0
    total_ns: int = 0
    token_ns: list[int] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def prefill_tps(self) -> float:
        return rate(self.prompt_tokens, self.prefill_ns)

    @property
    def decode_tps(self) -> float:
        # The first token comes out of prefill; decode time covers the tokens read after it.
        return rate(self.tokens_read - 1, self.decode_ns)

    def summary(self) -> str:
        return (
            f"prompt tokens: {self.prompt_tokens}  generated: {self.gen_tokens}  "
            f"time to first token: {self.ttft_ns / 1e9:.3f} s  "
            f"prefill: {self.prefill_tps:.1f} tok/s  decode: {self.decode_tps:.1f} tok/s  "
            f"stop: {self.stop_reason}  compile: {self.compile_ns / 1e9:.2f} s"
        )


MIN_DURATION_NS = 1_000  # below a microsecond a rate is noise, not a measurement


def rate(count: int, duration_ns: int) -> float:
    return count / (duration_ns / 1e9) if count > 0 and duration_ns >= MIN_DURATION_NS else 0.0


def chat_prompt_ids(model: Model, prompt: str, *, system: str | None = None, raw: bool = False) -> list[int]:
    """Render the chat template (unless raw) and tokenize, adding BOS once when the model wants it."""
    if raw:
        text = prompt
    else:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": prompt}
        ]
        text = model.chat.render(messages, add_generation_prompt=True)
    ids = model.tokenizer.encode(text, parse_special=not raw)
    bos = model.tokenizer.bos_id
    if model.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


class Generation:
    """Iterate for text chunks; `stats` is complete once iteration ends."""

    def __init__(
        self,
        model: Model,
        decoder: Decoder,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        if not prompt_ids:
            raise GenerationError("the prompt is empty")
        if max_tokens <= 0:
            raise GenerationError(f"max tokens must be at least 1, got {max_tokens}")
        context = model.config.context_length
        if len(prompt_ids) >= context:
            raise GenerationError(f"the prompt is {len(prompt_ids)} tokens, the model's context is {context}")
        self.model = model
        self.decoder = decoder
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int32)[None]
        self.budget = min(max_tokens, context - len(prompt_ids))
        self.stop_token_ids = frozenset(stop_token_ids)
        self.stats = Stats(prompt_tokens=len(prompt_ids))
        self.token_ids: list[int] = []  # the generated ids, stop token excluded

    def __iter__(self) -> Iterator[str]:
        stats = self.stats
        detok = self.model.tokenizer.stream_decoder()
        plan = plan_for(self.prompt_ids.shape[1], self.budget, self.model.config.context_length)
        compiled_before = self.decoder.compile_seconds
        self.decoder.prepare(plan, batch=1)
        stats.compile_ns = int((self.decoder.compile_seconds - compiled_before) * 1e9)
        start = last = time.perf_counter_ns()
        state = self.decoder.prefill(self.prompt_ids, plan)
        stats.stop_reason = "length"
        finished = False
        while not finished:
            # Dispatch the next step before reading these tokens back, so the device never waits on us.
            more = stats.gen_tokens + 1 < self.budget
            following = self.decoder.decode(state) if more else None
            tokens = np.asarray(state.tokens)[0]
            now = time.perf_counter_ns()
            if stats.tokens_read == 0:
                stats.ttft_ns = stats.prefill_ns = now - start
            real = [token for token in tokens.tolist() if token >= 0]  # negative ids fill unused slots
            if not real:  # a decoder that stopped on its own
                stats.stop_reason, finished = "stop", True
            for token in real:
                stats.tokens_read += 1
                stats.token_ns.append((now - last) // len(real))
                if token in self.stop_token_ids:
                    stats.stop_reason, finished = "stop", True
                    break
                stats.gen_tokens += 1
                self.token_ids.append(token)
                text = detok.push(token)
                if text:
                    yield text
                if stats.gen_tokens >= self.budget:
                    finished = True
                    break
            last = now
            if following is None:
                finished = True
            else:
                state = following
        tail = detok.flush()
        if tail:
            yield tail
        end = time.perf_counter_ns()
        stats.decode_ns = max(last - start - stats.prefill_ns, 0)
        stats.total_ns = end - start
