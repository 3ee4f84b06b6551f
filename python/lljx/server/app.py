"""The Ollama-compatible HTTP API as a Starlette app: routes, error replies, streaming and non-streaming runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import jax
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import lljx
from lljx.models import ResolvedModel
from lljx.server import prompts
from lljx.server.catalog import Catalog, show, tag_entry
from lljx.server.jobs import Finished, Job, Work
from lljx.server.pool import ModelPool
from lljx.server.responses import CHAT, GENERATE, Shape, metrics, ps_entry
from lljx.server.schemas import (
    Common,
    RequestError,
    parse_body,
    parse_chat,
    parse_generate,
    parse_options,
    parse_show,
)
from lljx.server.transport import MAX_BODY, NDJSONResponse, cancel_on_disconnect, error_response, ndjson, read_body

log = logging.getLogger("lljx.server")

Endpoint = Callable[[Request], Awaitable[Response]]


def json_errors(endpoint: Endpoint) -> Endpoint:
    """Every failure becomes `{"error": ...}` with its status; an unexpected one is logged and is a 500."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RequestError as error:
            return error_response(error)
        except Exception as error:  # noqa: BLE001 - the server outlives any request
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(RequestError(500, f"internal error: {type(error).__name__}: {error}"))

    return run


class Api:
    """The routes, over a model pool and a catalog of servable models."""

    def __init__(self, pool: ModelPool, catalog: Catalog, max_body: int) -> None:
        self.pool = pool
        self.catalog = catalog
        self.max_body = max_body

    async def body(self, request: Request) -> dict[str, Any]:
        return parse_body(await read_body(request, self.max_body))

    async def generate(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        parsed = parse_generate(await self.body(request))
        if not parsed.prompt and not parsed.context:
            return await self.load_only(parsed, GENERATE, started)
        return await self.run(request, parsed, partial(prompts.generate_ids, parsed), GENERATE, started)

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        parsed = parse_chat(await self.body(request))
        if not parsed.messages:
            return await self.load_only(parsed, CHAT, started)
        return await self.run(request, parsed, partial(prompts.chat_ids, parsed), CHAT, started)

    async def load_only(self, parsed: Common, shape: Shape, started: int) -> Response:
        """An empty prompt loads the model (done_reason "load"), or with keep_alive 0 unloads it."""
        resolved = self.catalog.lookup(parsed.model)
        loaded, load_ns = await self.pool.acquire(resolved)
        self.pool.release(loaded)
        reason = "load"
        if parsed.keep_alive == 0:
            self.pool.unload_after(loaded)
            reason = "unload"
        final = shape.final(parsed.model, "", reason, metrics(None, total_ns=time.perf_counter_ns() - started, load_ns=load_ns))
        return JSONResponse(final)

    async def run(self, request: Request, parsed: Common, prompt: Any, shape: Shape, started: int) -> Response:
        resolved: ResolvedModel = self.catalog.lookup(parsed.model)
        options = parse_options(parsed.options, resolved.ollama_params)
        work = Work(prompt, options, options.sampler(), parsed.schema)
        loaded, load_ns = await self.pool.acquire(resolved)
        if parsed.keep_alive == 0:
            self.pool.unload_after(loaded)
        job = Job(asyncio.get_running_loop())
        self.pool.submit(loaded, work, job)
        watcher = asyncio.create_task(cancel_on_disconnect(request.receive, job))

        def stop() -> None:
            watcher.cancel()
            job.cancel("client disconnected")

        def final(text: str, done: Finished) -> dict[str, Any]:
            total = time.perf_counter_ns() - started
            context = done.prompt_ids + done.token_ids
            return shape.final(parsed.model, text, done.stats.stop_reason or "stop",
                               metrics(done.stats, total_ns=total, load_ns=load_ns), context)

        try:
            kind, value = await job.next()  # queued, then compiled: the first event decides the status
            if kind != "started":
                stop()
                return error_response(value if kind == "error" else RequestError(503, "the request was cancelled"))
            if parsed.stream:
                return NDJSONResponse(self.lines(job, shape, parsed.model, final), on_close=stop)
            parts: list[str] = []
            while True:
                kind, value = await job.next()
                if kind == "chunk":
                    parts.append(value)
                elif kind == "done":
                    stop()
                    return JSONResponse(final("".join(parts), value))
                else:
                    stop()
                    return error_response(value if kind == "error" else RequestError(503, "the request was cancelled"))
        except BaseException:
            stop()
            raise

    async def lines(self, job: Job, shape: Shape, model: str, final: Callable[[str, Finished], dict[str, Any]]
                    ) -> AsyncIterator[bytes]:
        while True:
            kind, value = await job.next()
            if kind == "chunk":
                yield ndjson(shape.chunk(model, value))
            elif kind == "done":
                yield ndjson(final("", value))
                return
            elif kind == "error":
                yield ndjson({"error": value.message})
                return
            else:  # cancelled: the client is gone, or the server is stopping
                if self.pool.closing:
                    yield ndjson({"error": "the server is shutting down"})
                return

    async def show(self, request: Request) -> Response:
        parsed = parse_show(await self.body(request))
        resolved = self.catalog.lookup(parsed.model)
        return JSONResponse(await asyncio.to_thread(show, resolved, verbose=parsed.verbose))

    async def tags(self, request: Request) -> Response:
        rows = await asyncio.to_thread(self.catalog.rows)
        return JSONResponse({"models": [tag_entry(row) for row in rows]})

    async def ps(self, request: Request) -> Response:
        on_accelerator = jax.default_backend() != "cpu"
        models = sorted(self.pool.models.values(), key=lambda m: -m.last_used)
        rows = await asyncio.to_thread(lambda: [ps_entry(m, on_accelerator) for m in models])
        return JSONResponse({"models": rows})

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": lljx.__version__})

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


def create_app(pool: ModelPool, catalog: Catalog, *, max_body: int = MAX_BODY) -> Starlette:
    api = Api(pool, catalog, max_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pool.close()

    routes = [
        Route("/", json_errors(api.root), methods=["GET", "HEAD"]),
        Route("/api/version", json_errors(api.version), methods=["GET"]),
        Route("/api/tags", json_errors(api.tags), methods=["GET"]),
        Route("/api/ps", json_errors(api.ps), methods=["GET"]),
        Route("/api/show", json_errors(api.show), methods=["POST"]),
        Route("/api/generate", json_errors(api.generate), methods=["POST"]),
        Route("/api/chat", json_errors(api.chat), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
