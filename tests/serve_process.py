"""A real `lljx serve` process on loopback for the server tests: started on a free port, its output in a file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest
from fixtures.embedded_cache import cache_with_embedded_model


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.url, timeout=300)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(folder: Path, *args: str, **env_vars: str) -> Server:
    """`lljx serve` on a free port, its output in a file (a pipe nobody reads would block it), ready to answer."""
    log = folder / "serve.log"
    cache = cache_with_embedded_model(folder.parent / "cache")
    env = {**os.environ, "OLLAMA_MODELS": str(folder / "no-ollama-store"), "XDG_CACHE_HOME": str(cache)}
    env.update(env_vars)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lljx.cli", "serve", "--dtype", "f32", *(args or ("--port", "0"))],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if process.poll() is not None:
            pytest.fail(f"lljx serve exited with {process.returncode}: {log.read_text()}")
        if found:
            try:
                if httpx.get(found.group(1), timeout=5).status_code == 200:
                    return Server(found.group(1), process, log)
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    process.kill()
    process.wait()
    pytest.fail(f"lljx serve did not start: {log.read_text()}")


def stop_server(server: Server, sig: int = signal.SIGTERM) -> int:
    if server.process.poll() is None:
        server.process.send_signal(sig)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode
