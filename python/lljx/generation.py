"""Model + strategy + token loop -> streamed text chunks and timing Stats."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lljx import _native
from lljx.sampling import SamplerSettings
from lljx.strategies.api import Decoder, Strategy, plan_for

if TYPE_CHECKING:
    from lljx.models import Model
    from lljx.structured import CompiledSchema


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
    # Constrained generations: compiling the grammar (a cached one costs a lookup), and each step's mask.
    grammar_ns: int = 0
    mask_ns: list[int] = field(default_factory=list)
    # A batched request: time from submission until it took a slot.
    queue_ns: int = 0
    # Prompt tokens not computed: the start it shared with the prompt before it, whose cache it reused.
    prompt_cached: int = 0

    @property
    def prefill_tps(self) -> float:
        return rate(self.prompt_tokens - self.prompt_cached, self.prefill_ns)

    @property
    def decode_tps(self) -> float:
        # The first token comes out of prefill; decode time covers the tokens read after it.
        return rate(self.tokens_read - 1, self.decode_ns)

    @property
    def mask_p50_ns(self) -> int:
        return percentile(self.mask_ns, 50)

    @property
    def mask_p99_ns(self) -> int:
        return percentile(self.mask_ns, 99)

    def summary(self) -> str:
        text = (
            f"prompt tokens: {self.prompt_tokens}{f' ({self.prompt_cached} cached)' if self.prompt_cached else ''}  "
            f"generated: {self.gen_tokens}  "
            f"time to first token: {self.ttft_ns / 1e9:.3f} s  "
            f"prefill: {self.prefill_tps:.1f} tok/s  decode: {self.decode_tps:.1f} tok/s  "
            f"stop: {self.stop_reason}  compile: {self.compile_ns / 1e9:.2f} s"
        )
        if self.mask_ns:
            text += (
                f"  grammar: {self.grammar_ns / 1e6:.2f} ms  mask per token: "
                f"p50 {self.mask_p50_ns / 1e3:.0f} us, p99 {self.mask_p99_ns / 1e3:.0f} us"
            )
        return text


MIN_DURATION_NS = 1_000  # below a microsecond a rate is noise, not a measurement


def rate(count: int, duration_ns: int) -> float:
    return count / (duration_ns / 1e9) if count > 0 and duration_ns >= MIN_DURATION_NS else 0.0


def percentile(values: Sequence[int], q: int) -> int:
    """The q-th percentile (nearest rank) of `values`; 0 when there are none."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = -(-len(ordered) * q // 100)  # ceil(n q / 100), in integers
    return int(ordered[min(len(ordered), max(1, rank)) - 1])


def chat_prompt_ids(model: Model, prompt: str, *, system: str | None = None, raw: bool = False) -> list[int]:
    """Render the chat template (unless raw) and tokenize, adding BOS once when the model wants it."""
    if raw:
        return encode_prompt(model, prompt, parse_special=False)
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    return messages_prompt_ids(model, messages)


def messages_prompt_ids(model: Model, messages: Sequence[Mapping[str, object]], **extra: object) -> list[int]:
    """A whole conversation through the chat template, ending with the assistant's header."""
    text = model.chat.render(messages, add_generation_prompt=True, **extra)
    return encode_prompt(model, text, parse_special=True)


def encode_prompt(model: Model, text: str, *, parse_special: bool) -> list[int]:
    """Tokenize prompt text, adding BOS once when the model wants it (a template may already write it)."""
    ids = model.tokenizer.encode(text, parse_special=parse_special)
    bos = model.tokenizer.bos_id
    if model.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


class Generation:
    """Iterate for text chunks; `stats` and `token_ids` are complete once iteration ends.

    The loop itself is the Rust `TokenLoop`: it calls the decoder's prefill and decode,
    dispatching step n+1 before reading token n, detokenizes UTF-8-safely, applies stop
    tokens, stop strings and the budget, and times every token. With a `grammar` (a compiled
    schema) it drives the decoder's split step instead, masking every token, and the reply
    ends once the grammar is complete.
    """

    def __init__(
        self,
        model: Model,
        decoder: Decoder,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        settings: SamplerSettings | None = None,
        fast_start: bool = False,
        grammar: CompiledSchema | None = None,
    ) -> None:
        """`fast_start` lets a decoder that can (`prepare_prefill_first`) compile its decode step
        while the first token is computed; otherwise everything compiles before the loop starts."""
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
        self.plan = plan_for(len(prompt_ids), self.budget, context)
        self._compiled_before = decoder.compile_seconds
        self.grammar = grammar
        early = getattr(decoder, "prepare_prefill_first", None) if fast_start and grammar is None else None
        if early is not None:
            early(self.plan, batch=1, decode=self.budget > 1)  # one token needs no decode step
        elif grammar is not None:
            decoder.prepare(self.plan, batch=1, masked=True)  # the split step, compiled outside the timed loop
        else:
            decoder.prepare(self.plan, batch=1)  # compile outside the timed loop
        self._loop = _native.TokenLoop(
            decoder, model.tokenizer._native, self.prompt_ids[0], self.plan,
            max_tokens=self.budget, stop_ids=list(stop_token_ids), stop_strings=list(stop_strings), settings=settings,
            grammar=None if grammar is None else grammar.grammar,
        )

    def __iter__(self) -> Iterator[str]:
        return self._loop

    def close(self) -> None:
        """Stop early; no further device calls are made."""
        self._loop.close()

    @property
    def token_ids(self) -> list[int]:
        """The generated ids so far, a final stop token excluded."""
        return self._loop.token_ids

    @property
    def compile_ns(self) -> int:
        """Compile time this generation caused, a decode step compiled in the background included."""
        return int((self.decoder.compile_seconds - self._compiled_before) * 1e9)

    @property
    def stats(self) -> Stats:
        stats = Stats(compile_ns=self.compile_ns, **self._loop.stats)
        if self.grammar is not None:
            # The grammar was compiled for this request before its loop started: the first
            # token and the whole request waited for it.
            stats.grammar_ns = self.grammar.compile_ns
            stats.ttft_ns += stats.grammar_ns
            stats.total_ns += stats.grammar_ns
        return stats


def start_quickly(
    strategy: Strategy,
    model_spec: str | None,
    *,
    dtype: str,
    settings: SamplerSettings,
    prompt_ids: Callable[[Model], list[int]],
    max_tokens: int,
    masked: bool = False,
) -> tuple[Model, Decoder, list[int]]:
    """Model, decoder and prompt ids for one generation, with the prefill compiled (or loaded from
    the compilation cache) while the weights load on another thread: the first token comes sooner.

    `prompt_ids` turns the model (its weights still shapes only) into the prompt's ids. A format
    that cannot describe its weights before reading them, or a strategy that cannot be built on
    shapes-only weights, just builds after loading. Hand the result to `Generation(...,
    fast_start=True)` so the decode step compiles while the first token is computed.
    `masked` (a constrained reply) compiles the split step's programs instead.
    """
    from lljx.models import load_model_early
    from lljx.strategies import registry

    skeleton, loading = load_model_early(model_spec, dtype=dtype)
    ids = prompt_ids(skeleton)
    early: Any = None  # a decoder with prepare_prefill_first (optional in the contract)
    try:
        early = registry.build(strategy, skeleton, settings)
        budget = min(max_tokens, skeleton.config.context_length - len(ids))
        plan = plan_for(len(ids), budget, skeleton.config.context_length)
        if ids and budget > 0 and masked:
            early.prepare(plan, masked=True)
        elif ids and budget > 0:
            # Only the prefill: the decode step starts compiling once the weights are in.
            early.prepare_prefill_first(plan, decode=False)
    except Exception:  # noqa: BLE001  (any failure here only means no head start)
        early = None
    model = loading.result()
    for built in ("tokenizer", "chat"):
        # The same file's tokenizer and chat template, already built for the prompt: not twice.
        if built in vars(skeleton) and built not in vars(model):
            vars(model)[built] = vars(skeleton)[built]
    decoder = registry.build(strategy, model, settings)
    if early is not None and hasattr(decoder, "adopt_programs"):
        decoder.adopt_programs(early)
    return model, decoder, ids
