"""HTTP plumbing below the routes: bounded body reading, NDJSON streaming, noticing a client that left."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from lljx.server.jobs import Job
from lljx.server.schemas import RequestError

log = logging.getLogger("lljx.server")

MAX_BODY = 8 * 1024 * 1024
# An oversized body is read and dropped up to this much, so the client sees the 413 instead of
# a reset connection; past it the connection is closed.
DRAIN_LIMIT = 64 * 1024 * 1024


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 once it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise RequestError(413, f"request body too large (the limit is {limit} bytes)")
    return b"".join(chunks)


def ndjson(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() + b"\n"


async def cancel_on_disconnect(receive: Receive, job: Job) -> None:
    """Wait for the client to go away and stop its job. The body is read already, so the next
    ASGI message is the disconnect."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancel("client disconnected")
            return


class NDJSONResponse(Response):
    """Streams lines from an async iterator; `on_close` runs however the stream ends.

    Unlike starlette's StreamingResponse it does not read `receive` itself: the route's
    disconnect watcher already does, and cancels the job, which ends the lines.
    """

    media_type = "application/x-ndjson"

    def __init__(self, lines: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.lines = lines
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for line in self.lines:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            log.info("client went away mid-stream")
        finally:
            self.on_close()
