"""One generation request as a job: run on its model's worker thread, events handed to the asyncio side.

JAX work for one model is serialized on that model's single worker thread, so requests queue
in arrival order and each one's output is what it would be alone. The asyncio side reads
events (started, chunk, done, error) from a queue; `cancel` (a client went away, or
shutdown) is seen between chunks and ends the generation, which frees the worker.
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

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()

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


def run(job: Job, loaded: Loaded, work: Work) -> None:
    """The worker-thread body: build the prompt, compile if needed, stream chunks, report stats."""
    if job.cancelled.is_set():
        log.info("request dropped before it started (%s)", job.reason)
        job.put("cancelled")
        return
    model = loaded.model
    try:
        ids = work.prompt_ids(model)
        # Compiled before anything else, so a bad schema is a 400 whatever the budget, and costs no XLA compile.
        grammar = None if work.schema is None else compile_schema(model, work.schema)
        _, budget = budget_for(work.options, len(ids), model.config.context_length)
        if budget == 0:  # num_predict 0: nothing to generate, as Ollama answers at once
            job.put("started", 0)
            job.put("done", Finished(Stats(prompt_tokens=len(ids), stop_reason="length"), ids, []))
            return
        decoder = loaded.decoder(work.settings)
        # Stop strings would cut a JSON reply short, so a constrained reply ends only when its grammar does.
        stops = () if grammar is not None else work.options.stop
        generation = Generation(
            model, decoder, ids, max_tokens=budget, stop_token_ids=model.stop_token_ids,
            stop_strings=stops, settings=work.settings, grammar=grammar,
        )
    except RequestError as error:
        job.put("error", error)
        return
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
