"""Loaded models: load on first use, keep up to `max_loaded` (least recently used goes first), one worker each.

A model whose strategy builds slots gets a batch engine serving `parallel` requests at once
(the rest wait in order); its worker thread prepares requests (prompt, grammar) for it.
Otherwise the worker thread is the model's queue, and it caches one decoder per sampler
structure (greedy or the top-k width), so compiled programs are reused by every request;
temperature, top-p, min-p and seed are runtime values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax

from lljx.batching import BatchEngine, slots_for
from lljx.models import Model, ResolvedModel, load_resolved
from lljx.sampling import SamplerSettings
from lljx.server import jobs
from lljx.server.schemas import RequestError
from lljx.strategies import registry
from lljx.strategies.api import Decoder, Strategy

log = logging.getLogger("lljx.server")


@dataclass(eq=False)
class Loaded:
    """A model in memory with its worker thread and compiled decoders."""

    key: str
    resolved: ResolvedModel
    model: Model
    strategy: Strategy
    loaded_at: float
    last_used: float
    executor: ThreadPoolExecutor
    pending: int = 0  # requests queued or running
    unload_when_idle: bool = False
    decoders: dict[tuple[bool, int], Decoder] = field(default_factory=dict)
    engine: BatchEngine | None = None  # None: one request at a time, from the worker's queue

    @property
    def slots(self) -> int:
        """Requests that run at once."""
        return 1 if self.engine is None else self.engine.slots

    @property
    def size(self) -> int:
        """Bytes of the weights in memory (what /api/ps reports)."""
        return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(self.model.params))

    # Runs on the worker thread only, so the cache needs no lock. The same decoder serves free
    # and constrained replies (the latter through its split step, compiled when first needed).
    def decoder(self, settings: SamplerSettings) -> Decoder:
        decoder = self.decoders.get(settings.structure)
        if decoder is None:
            decoder = self.decoders[settings.structure] = registry.build(self.strategy, self.model, settings)
        return decoder


class ModelPool:
    """The models in memory, keyed by file; loads happen off the event loop, one per model at a time."""

    def __init__(
        self, *, dtype: str, strategy: Strategy, max_loaded: int = 1, max_queue: int = 512, parallel: int | None = None,
    ) -> None:
        """`parallel` requests run at once per model (None: `default_slots` for the model); up to
        `max_queue` more wait for a slot, and past them a request is answered 503."""
        self.dtype = dtype
        self.strategy = strategy
        self.parallel = parallel
        self.max_loaded = max(1, max_loaded)
        self.max_queue = max_queue
        self.models: dict[str, Loaded] = {}
        self.jobs: set[jobs.Job] = set()
        self._loading: dict[str, asyncio.Lock] = {}
        self.closing = False

    @staticmethod
    def key(resolved: ResolvedModel) -> str:
        return f"{resolved.format}:{resolved.path}"

    async def acquire(self, resolved: ResolvedModel) -> tuple[Loaded, int]:
        """The loaded model (loading it if needed) with one request reserved on it, and the ns spent getting it."""
        if self.closing:
            raise RequestError(503, "the server is shutting down")
        start = time.perf_counter_ns()
        key = self.key(resolved)
        async with self._loading.setdefault(key, asyncio.Lock()):
            loaded = self.models.get(key)
            if loaded is None:
                loaded = await self._load(key, resolved)
        if loaded.pending >= loaded.slots + self.max_queue:
            raise RequestError(503, "server busy, please try again: maximum pending requests exceeded")
        loaded.pending += 1
        loaded.last_used = time.time()
        loaded.unload_when_idle = False
        self._evict_idle()
        return loaded, time.perf_counter_ns() - start

    async def _load(self, key: str, resolved: ResolvedModel) -> Loaded:
        log.info("loading %s (%s)", resolved.name, self.dtype)
        try:
            model = await asyncio.to_thread(load_resolved, resolved, dtype=self.dtype)
            engine = await asyncio.to_thread(self._engine, model)
        except Exception as error:  # noqa: BLE001 - a broken file is the request's failure, not the server's
            raise RequestError(500, f'model "{resolved.name}" failed to load: {error}') from None
        now = time.time()
        loaded = Loaded(
            key, resolved, model, self.strategy, now, now,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lljx-{resolved.name}"), engine=engine,
        )
        self.models[key] = loaded
        log.info(
            "%s: %s", resolved.name,
            f"{engine.slots} requests at once" if engine else f"one request at a time ({self.strategy.name} has no slots)",
        )
        return loaded

    def _engine(self, model: Model) -> BatchEngine | None:
        decoder = registry.build_slots(self.strategy, model)
        if decoder is None:
            return None
        engine = BatchEngine(model, decoder, slots=slots_for(decoder, self.parallel), name=f"lljx-batch-{model.name}")
        engine.warm_up()
        return engine

    def submit(self, loaded: Loaded, work: jobs.Work, job: jobs.Job) -> None:
        """Queue `work` on the model's worker (or its batch engine); the reservation from `acquire`
        is released when it ends."""
        self.jobs.add(job)
        loop = asyncio.get_running_loop()

        def finished(_: Any = None) -> None:
            self.jobs.discard(job)
            self.release(loaded)

        if loaded.engine is None:
            loop.run_in_executor(loaded.executor, jobs.run, job, loaded, work).add_done_callback(finished)
            return

        def ended() -> None:
            try:
                loop.call_soon_threadsafe(finished)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        loop.run_in_executor(loaded.executor, jobs.run_batched, job, loaded, work, ended)

    def release(self, loaded: Loaded) -> None:
        loaded.pending -= 1
        loaded.last_used = time.time()
        self._evict_idle()

    def unload_after(self, loaded: Loaded) -> None:
        """keep_alive 0: unload once the model's queued requests are done."""
        loaded.unload_when_idle = True
        self._evict_idle()

    def _evict_idle(self) -> None:
        for loaded in [m for m in self.models.values() if m.unload_when_idle and m.pending == 0]:
            self._drop(loaded)
        idle = sorted((m for m in self.models.values() if m.pending == 0), key=lambda m: m.last_used)
        while len(self.models) > self.max_loaded and idle:
            self._drop(idle.pop(0))

    def _drop(self, loaded: Loaded) -> None:
        if self.models.get(loaded.key) is loaded:
            del self.models[loaded.key]
            loaded.executor.shutdown(wait=False)
            if loaded.engine is not None:
                loaded.engine.close("the model was unloaded", timeout=0)
            log.info("unloaded %s", loaded.resolved.name)

    def cancel_all(self, reason: str) -> None:
        """Shutdown: stop every running and queued generation (safe from a signal handler or any thread)."""
        self.closing = True
        for job in list(self.jobs):
            job.cancel(reason)

    def close(self) -> None:
        self.cancel_all("server stopped")
        for loaded in list(self.models.values()):
            loaded.executor.shutdown(wait=False, cancel_futures=True)
            if loaded.engine is not None:
                loaded.engine.close("the server is shutting down")
        self.models.clear()
