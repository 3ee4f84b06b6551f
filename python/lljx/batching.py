"""Many requests at once: a strategy's batched decoder driven by the Rust `BatchLoop` on one thread.

Requests are submitted from any thread and join the batch between steps; each has its own
detokenizer, stop strings, budget, sampler settings, grammar and stats, and its events (text,
then its end) arrive through its own callback, or as one iterator per request (`stream`).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lljx import _native
from lljx.generation import GenerationError, Stats
from lljx.sampling import SamplerSettings, mask_words, seed_key_data
from lljx.strategies.slots import SlotDecoder

if TYPE_CHECKING:
    from lljx.models import Model
    from lljx.structured import CompiledSchema

log = logging.getLogger("lljx.batching")

# What a callback receives: (text, end, detail); end is "" while running, "done" (detail: the
# Finished), "failed" (detail: a message) or "cancelled".
Callback = Callable[[str, str, Any], None]

STAT_FIELDS = {f.name for f in fields(Stats)}


@dataclass(frozen=True)
class Finished:
    """A request's end: its stats and the generated ids (a final stop token excluded)."""

    stats: Stats
    token_ids: list[int]


@dataclass
class _Submit:
    id: int
    prompt_ids: list[int]
    max_tokens: int
    settings: SamplerSettings
    stop_strings: Sequence[str]
    grammar: CompiledSchema | None
    callback: Callback


@dataclass
class _Inbox:
    lock: threading.Condition = field(default_factory=threading.Condition)
    submits: list[_Submit] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    stopping: str | None = None


class BatchEngine:
    """A batched decoder with `slots` requests running at once (the rest wait, in order).

    The engine thread owns all device work; a step that prefills while rows decode aims to take
    at most `step_target_ms`, so a long prompt never freezes the other streams.
    """

    def __init__(
        self, model: Model, decoder: SlotDecoder, *, slots: int, step_target_ms: int = 150, name: str = "lljx-batch"
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.model = model
        self.decoder = decoder
        self.slots = slots
        self.step_target_ms = step_target_ms
        self._ids = itertools.count(1)
        self._inbox = _Inbox()
        self._callbacks: dict[int, Callback] = {}
        self._counts = (0, 0)  # (in slots, live), as the engine thread last saw them
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- any thread ----

    def submit(
        self, prompt_ids: Sequence[int], *, max_tokens: int, settings: SamplerSettings, callback: Callback,
        stop_strings: Sequence[str] = (), grammar: CompiledSchema | None = None,
    ) -> int:
        """Queue a request; returns its id. The callback runs on the engine thread."""
        if not prompt_ids:
            raise GenerationError("the prompt is empty")
        if max_tokens <= 0:
            raise GenerationError(f"max tokens must be at least 1, got {max_tokens}")
        context = self.model.config.context_length
        if len(prompt_ids) >= context:
            raise GenerationError(f"the prompt is {len(prompt_ids)} tokens, the model's context is {context}")
        request = _Submit(
            next(self._ids), list(prompt_ids), min(max_tokens, context - len(prompt_ids)), settings,
            tuple(stop_strings), grammar, callback,
        )
        with self._inbox.lock:
            if self._inbox.stopping is not None:
                raise GenerationError(self._inbox.stopping)
            self._inbox.submits.append(request)
            self._inbox.lock.notify()
        return request.id

    def cancel(self, request_id: int) -> None:
        """End a request at once: its slot is free for the next step."""
        with self._inbox.lock:
            self._inbox.cancels.append(request_id)
            self._inbox.lock.notify()

    def stream(
        self, prompt_ids: Sequence[int], *, max_tokens: int, settings: SamplerSettings,
        stop_strings: Sequence[str] = (), grammar: CompiledSchema | None = None,
    ) -> Stream:
        """Queue a request and iterate its text; `finished` holds its stats once iteration ends."""
        events: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        request_id = self.submit(
            prompt_ids, max_tokens=max_tokens, settings=settings, stop_strings=stop_strings, grammar=grammar,
            callback=lambda text, end, detail: events.put((text, end, detail)),
        )
        return Stream(self, request_id, events)

    @property
    def in_slots(self) -> int:
        """Requests holding a slot (prefilling or decoding)."""
        return self._counts[0]

    @property
    def waiting(self) -> int:
        return self._counts[1] - self._counts[0]

    def close(self, message: str = "the server is shutting down", timeout: float = 30.0) -> None:
        """Every request still here ends (failed, with `message`); the engine thread stops."""
        with self._inbox.lock:
            if self._inbox.stopping is None:
                self._inbox.stopping = message
            self._inbox.lock.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the engine thread ----

    def _run(self) -> None:
        model = self.model
        loop = _native.BatchLoop(
            self.decoder, model.tokenizer._native, slots=self.slots, mask_words=mask_words(self.decoder.vocab),
            step_target_ms=self.step_target_ms,
        )
        stop_ids = list(model.stop_token_ids)
        while True:
            with self._inbox.lock:
                while loop.live == 0 and not (self._inbox.submits or self._inbox.cancels or self._inbox.stopping):
                    self._inbox.lock.wait()
                submits, self._inbox.submits = self._inbox.submits, []
                cancels, self._inbox.cancels = self._inbox.cancels, []
                stopping = self._inbox.stopping
            for request in submits:
                self._callbacks[request.id] = request.callback
                settings = request.settings
                key = seed_key_data(settings.seed)
                loop.submit(
                    request.id, request.prompt_ids, max_tokens=request.max_tokens, stop_ids=stop_ids,
                    stop_strings=list(request.stop_strings), key=(int(key[0]), int(key[1])),
                    temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p, min_p=settings.min_p,
                    grammar=None if request.grammar is None else request.grammar.grammar,
                )
            for request_id in cancels:
                if loop.cancel(request_id):
                    self._deliver((request_id, "", "cancelled", None))
            if stopping is not None:
                for event in loop.fail_all(stopping):
                    self._deliver(event)
                self._counts = (0, 0)
                return
            try:
                events = loop.step()
            except Exception as error:  # noqa: BLE001 - the batch's requests fail, the engine lives on
                log.exception("a batched step failed")
                events = loop.fail_all(f"generation failed: {type(error).__name__}: {error}")
            for event in events:
                self._deliver(event)
            self._counts = (loop.in_slots, loop.live)
            if not loop.progressed:
                # Waiting for a compile on the background thread: do not spin on the cores it needs.
                with self._inbox.lock:
                    self._inbox.lock.wait(0.005)

    def _deliver(self, event: tuple[int, str, str, Any]) -> None:
        request_id, text, end, detail = event
        callback = self._callbacks.get(request_id)
        if callback is None:
            return
        if end:
            del self._callbacks[request_id]
        if end == "done":
            detail = finished(detail)
        try:
            callback(text, end, detail)
        except Exception:  # noqa: BLE001 - one listener's failure must not stop the batch
            log.exception("a request's callback failed")


def finished(detail: dict[str, Any]) -> Finished:
    stats = Stats(**{key: value for key, value in detail.items() if key in STAT_FIELDS})
    return Finished(stats, list(detail["token_ids"]))


class Stream:
    """One request's text chunks; `finished` is set once iteration ends normally."""

    def __init__(self, engine: BatchEngine, request_id: int, events: queue.SimpleQueue[tuple[str, str, Any]]) -> None:
        self.engine = engine
        self.id = request_id
        self._events = events
        self.finished: Finished | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            text, end, detail = self._events.get()
            if text:
                yield text
            if end == "done":
                self.finished = detail
                return
            if end == "failed":
                raise GenerationError(str(detail))
            if end == "cancelled":
                return

    def close(self) -> None:
        self.engine.cancel(self.id)
