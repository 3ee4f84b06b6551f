"""One generation request as a job: prepared on its model's worker thread, events handed to the asyncio side.

A model served in slots (`run_batched`) hands the request to its batch engine, which runs
many at once; each one's output is what it would be alone. Otherwise (`run`) JAX work for the
model is serialized on its single worker thread, so requests queue in arrival order. The
asyncio side reads events (started, chunk, done, error) from a queue; `cancel` (a client went
away, or shutdown) ends the generation: a batched one leaves its slot at once, a queued one
between chunks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lljx._native import GrammarError, TemplateError, TokenizerError
from lljx.generation import Generation, GenerationError, Stats
from lljx.sampling import SamplerSettings, SamplingError
from lljx.server.schemas import Options, RequestError
from lljx.structured import compile_schema

if TYPE_CHECKING:
    from lljx.models import Model
    from lljx.server.pool import Loaded
    from lljx.structured import CompiledSchema

log = logging.getLogger("lljx.server")

CLIENT_ERRORS = (GenerationError, GrammarError, SamplingError, TemplateError, TokenizerError)


@dataclass(frozen=True)
class Work:
    """What to generate: a prompt builder (run on the worker, it may be slow for long chats) and settings."""

    prompt_ids: Callable[[Model], list[int]]
    options: Options
    settings: SamplerSettings
    schema: dict[str, Any] | None  # the reply follows this JSON schema (None: free text)


@dataclass(frozen=True)
class Finished:
    stats: Stats
    prompt_ids: list[int]
    token_ids: list[int]


@dataclass(eq=False)
class Job:
    """The bridge between a worker thread and the request's coroutine."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    _hooks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.reason = reason
            self.cancelled.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the job is cancelled (at once if it already was)."""
        with self._lock:
            if not self.cancelled.is_set():
                self._hooks.append(hook)
                return
        hook()

    def put(self, kind: str, value: Any = None) -> None:
        """Thread side: hand an event to the loop (a loop already closed means nobody is listening)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:
            self.cancel("server stopped")

    async def next(self) -> tuple[str, Any]:
        return await self.events.get()


def budget_for(options: Options, prompt_len: int, context_length: int) -> tuple[int, int]:
    """(num_ctx in effect, token budget); a prompt that leaves no room is a 400 naming num_ctx."""
    num_ctx = min(options.num_ctx, context_length)
    if prompt_len >= num_ctx:
        raise RequestError(
            400,
            f"the prompt is {prompt_len} tokens, which does not fit num_ctx {num_ctx} "
            f"(raise options.num_ctx; this model's context is {context_length})",
        )
    room = num_ctx - prompt_len
    return num_ctx, room if options.num_predict is None else min(options.num_predict, room)


def prepare(job: Job, model: Model, work: Work) -> tuple[list[int], CompiledSchema | None, int] | None:
    """Prompt ids, grammar and token budget; None (with the error sent) when the request cannot run."""
    try:
        ids = work.prompt_ids(model)
        # Compiled before anything else, so a bad schema is a 400 whatever the budget, and costs no XLA compile.
        grammar = None if work.schema is None else compile_schema(model, work.schema)
        _, budget = budget_for(work.options, len(ids), model.config.context_length)
    except RequestError as error:
        job.put("error", error)
        return None
    except CLIENT_ERRORS as error:
        job.put("error", RequestError(400, str(error)))
        return None
    except Exception as error:  # noqa: BLE001 - reported to the client, never kills the worker
        log.exception("generation failed to start")
        job.put("error", RequestError(500, f"generation failed: {type(error).__name__}: {error}"))
        return None
    return ids, grammar, budget


def run_batched(job: Job, loaded: Loaded, work: Work, ended: Callable[[], None]) -> None:
    """Prepare the request on the worker thread and hand it to the model's batch engine; `ended`
    runs once when the request is over, whichever way it ends."""
    engine = loaded.engine
    assert engine is not None
    if job.cancelled.is_set():
        log.info("request dropped before it started (%s)", job.reason)
        job.put("cancelled")
        ended()
        return
    prepared = prepare(job, loaded.model, work)
    if prepared is None:
        ended()
        return
    ids, grammar, budget = prepared
    if budget == 0:  # num_predict 0: nothing to generate, as Ollama answers at once
        job.put("started", 0)
        job.put("done", Finished(Stats(prompt_tokens=len(ids), stop_reason="length"), ids, []))
        ended()
        return

    started = False

    def on_event(text: str, end: str, detail: Any) -> None:
        # On the engine thread, so "started" (the reply's status is 200 from here) comes with the
        # request's first text or its end, never after either; a failure before it is a 500.
        nonlocal started
        if not started and end not in ("failed", "cancelled"):
            started = True
            job.put("started", 0)
        if text:
            job.put("chunk", text)
        if end == "done":
            job.put("done", Finished(detail.stats, ids, detail.token_ids))
        elif end == "failed":
            job.put("error", RequestError(500, str(detail)))
        elif end == "cancelled":
            log.info("generation stopped (%s) after %d tokens", job.reason, detail)
            job.put("cancelled")
        if end:
            ended()

    try:
        request_id = engine.submit(
            ids, max_tokens=budget, settings=work.settings, callback=on_event,
            # Stop strings would cut a JSON reply short, so a constrained reply ends only when its grammar does.
            stop_strings=() if grammar is not None else work.options.stop, grammar=grammar,
        )
    except GenerationError as error:
        job.put("error", RequestError(503 if "shutting down" in str(error) else 400, str(error)))
        ended()
        return
    job.on_cancel(lambda: engine.cancel(request_id))


def run(job: Job, loaded: Loaded, work: Work) -> None:
    """The worker-thread body: build the prompt, compile if needed, stream chunks, report stats."""
    if job.cancelled.is_set():
        log.info("request dropped before it started (%s)", job.reason)
        job.put("cancelled")
        return
    model = loaded.model
    prepared = prepare(job, model, work)
    if prepared is None:
        return
    ids, grammar, budget = prepared
    if budget == 0:  # num_predict 0: nothing to generate, as Ollama answers at once
        job.put("started", 0)
        job.put("done", Finished(Stats(prompt_tokens=len(ids), stop_reason="length"), ids, []))
        return
    try:
        decoder = loaded.decoder(work.settings)
        # Stop strings would cut a JSON reply short, so a constrained reply ends only when its grammar does.
        stops = () if grammar is not None else work.options.stop
        generation = Generation(
            model, decoder, ids, max_tokens=budget, stop_token_ids=model.stop_token_ids,
            stop_strings=stops, settings=work.settings, grammar=grammar,
        )
    except CLIENT_ERRORS as error:
        job.put("error", RequestError(400, str(error)))
        return
    except Exception as error:  # noqa: BLE001 - reported to the client, never kills the worker
        log.exception("generation failed to start")
        job.put("error", RequestError(500, f"generation failed: {type(error).__name__}: {error}"))
        return
    job.put("started", generation.compile_ns)
    try:
        for chunk in generation:
            if job.cancelled.is_set():
                generation.close()
                log.info("generation stopped (%s) after %d tokens", job.reason, generation.stats.gen_tokens)
                job.put("cancelled")
                return
            job.put("chunk", chunk)
    except Exception as error:  # noqa: BLE001
        log.exception("generation failed")
        job.put("error", RequestError(500, f"generation failed: {type(error).__name__}: {error}"))
        return
    job.put("done", Finished(generation.stats, ids, generation.token_ids))
