"""`lljx serve`: the Ollama-compatible API on uvicorn; host parsing as OLLAMA_HOST does it, clean shutdown."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import socket
import sys
from typing import Any

import click

from lljx.cli import DTYPE_CHOICES, DTYPE_HELP, default_dtype, enable_compile_cache, one_line_errors
from lljx.parallel.options import mesh_options

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def parse_host(value: str) -> tuple[str, int]:
    """`host`, `host:port`, `:port`, `[v6]:port` or `http://host:port` -> (host, port), as OLLAMA_HOST reads."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    default_port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", text
    elif scheme in ("http", "https"):
        default_port = 80 if scheme == "http" else 443
    else:
        raise click.BadParameter(f"unsupported scheme {scheme!r} in {value!r}", param_hint="--host")
    hostport = rest.split("/", 1)[0]
    host, port_text = hostport, ""
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    elif hostport.count(":") > 1:  # a bare IPv6 address
        host = hostport
    if port_text and not (port_text.isdigit() and int(port_text) <= 65535):
        raise click.BadParameter(f"bad port {port_text!r} in {value!r}", param_hint="--host")
    return host or DEFAULT_HOST, int(port_text) if port_text else default_port


MAX_PARALLEL = 64
PARALLEL_ENV = "OLLAMA_NUM_PARALLEL"


def parallel_from_env() -> int | None:
    """OLLAMA_NUM_PARALLEL as Ollama reads it: unset, empty or 0 means the default."""
    text = os.environ.get(PARALLEL_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_PARALLEL:
        raise click.BadParameter(f"{PARALLEL_ENV} must be a whole number from 0 to {MAX_PARALLEL}, got {text!r}",
                                 param_hint=PARALLEL_ENV)
    return int(text) or None


def listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is one clear error and port 0 picks a free one."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name
    # Naming the protocol matters: asyncio turns Nagle's algorithm off only on sockets whose
    # proto is IPPROTO_TCP, and with it on, a kept-alive client's stream stalled ~40 ms
    # behind its delayed ACKs and arrived in one lump.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lljx: %(message)s"))
    logger = logging.getLogger("lljx.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@click.command()
@click.option("--host", default=None, help="host, host:port or http://host:port to listen on [default: $OLLAMA_HOST or 127.0.0.1:11434]")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (overrides one in --host; 0 picks a free port).")
@click.option("--model", "-m", "models", multiple=True,
              help="A model to serve besides the embedded one and the Ollama store: GGUF file, HF folder or name (repeatable).")
@click.option("--strategy", "-s", "strategy_name", default=None, help="Where jax.jit goes (see `lljx strategies`); default native-token on CPU, jit-token elsewhere.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, help=DTYPE_HELP)
@click.option("--max-loaded", type=click.IntRange(min=1), default=1, show_default=True, help="Models kept in memory at once.")
@click.option("--max-queue", type=click.IntRange(min=1), default=512, show_default=True,
              help="Requests waiting for a slot per model before answering 503.")
@click.option("--parallel", type=click.IntRange(min=1, max=MAX_PARALLEL), default=None,
              help="Requests each model serves at once [default: $OLLAMA_NUM_PARALLEL, else 8, or 4 when "
                   "8 full contexts of KV cache would take over a quarter of memory].")
@one_line_errors
@mesh_options
def serve(
    host: str | None, port: int | None, models: tuple[str, ...], strategy_name: str | None, dtype: str,
    max_loaded: int, max_queue: int, parallel: int | None,
) -> None:
    """Serve the Ollama HTTP API (/api/generate, /api/chat, /api/tags, /api/show, /api/ps, /api/version).

    With several processes, process 0 serves HTTP and the others make the same device calls it makes."""
    import uvicorn

    from lljx.server.app import create_app
    from lljx.server.catalog import Catalog
    from lljx.server.pool import ModelPool
    from lljx.strategies import registry

    address, host_port = parse_host(host if host is not None else os.environ.get("OLLAMA_HOST", "") or DEFAULT_HOST)
    slots = parallel if parallel is not None else parallel_from_env()
    strategy = registry.load(strategy_name or registry.default_strategy())
    from lljx import parallel as tensor_parallel

    if tensor_parallel.active() is not None:
        tensor_parallel.check_strategy(strategy)  # refused before listening, not on the first request
    catalog = Catalog.from_specs(models)
    enable_compile_cache()
    gc.freeze()  # JAX and the server's modules live as long as the process: collections skip them
    pool = ModelPool(
        dtype=default_dtype() if dtype == "auto" else dtype, strategy=strategy, max_loaded=max_loaded, max_queue=max_queue,
        parallel=slots,
    )
    from lljx.parallel import distributed, relay

    if distributed.started() and not distributed.is_writer():
        relay.follow()  # until process 0 stops serving
        return
    sock = listen(address, host_port if port is None else port)
    setup_logging()
    publisher = relay.start_publishing() if distributed.started() else None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("lljx.server").info(
        "listening on http://%s:%d (strategy %s, dtype %s)", shown, bound_port, strategy.name, pool.dtype
    )
    # loop and http stay "auto": uvloop and httptools where installed (they are dependencies),
    # asyncio and h11 where a platform has no uvloop.
    config = uvicorn.Config(
        create_app(pool, catalog), log_level="info", timeout_graceful_shutdown=10, lifespan="on",
    )
    try:
        stopping_server(config, pool).run(sockets=[sock])
    finally:
        if publisher is not None:
            publisher.stop()  # the other processes leave with this one
    logging.getLogger("lljx.server").info("stopped")


def stopping_server(config: Any, pool: Any) -> Any:
    """uvicorn's server, except that a signal first stops running generations (so open streams
    end at once) and the process then exits 0 instead of re-raising the signal."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            pool.cancel_all("server stopping")
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return StoppingServer(config)
