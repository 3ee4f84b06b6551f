"""A GGUF model's header read and its tokenizer built on a thread at command start, while JAX imports.

A command that will load a GGUF file calls `start(spec)` before anything imports JAX; the
thread needs only the header reader, the vocabulary and the Rust tokenizer (which builds
with the GIL released), so a cold start pays for JAX's import and the tokenizer at once
instead of one after the other. `result(path)` hands over what was read, if it is that file
as it is now; anything else (another spec, a failure) is left for the normal path to redo.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from lljx.models.gguf_file import GGUFFile, read_gguf_header


@dataclass(frozen=True)
class Early:
    header: GGUFFile
    tokenizer: Any  # lljx.tokenizer.Tokenizer


_STARTED: dict[tuple[str, int, int], Future[Early]] = {}
_LOCK = threading.Lock()


def start(spec: str | None) -> None:
    """Begin reading `spec`'s header and building its tokenizer, when `spec` names a GGUF file
    directly (a path, or None for the embedded model once it is on disk); otherwise nothing."""
    path = _gguf_path(spec)
    key = _identity(path) if path is not None else None
    if key is None:
        return
    with _LOCK:
        if key in _STARTED:
            return
        future: Future[Early] = Future()
        _STARTED[key] = future
    threading.Thread(target=_read, args=(path, future), name="lljx-prefetch", daemon=True).start()


def result(path: str) -> Early | None:
    """What `start` read for `path`, if it read this file as it is now (waiting for it); else None."""
    key = _identity(path)
    with _LOCK:
        future = _STARTED.pop(key, None) if key is not None else None
    if future is None:
        return None
    try:
        return future.result()
    except Exception:  # noqa: BLE001 - the normal path reads the file again and reports its error
        return None


def _read(path: str, future: Future[Early]) -> None:
    try:
        from lljx.models.vocab import build_tokenizer, gguf_vocab

        header = read_gguf_header(path)
        future.set_result(Early(header, build_tokenizer(gguf_vocab(header)[0])))
    except BaseException as error:  # noqa: BLE001 - handed to `result`, which falls back
        future.set_exception(error)


def _gguf_path(spec: str | None) -> str | None:
    if spec is None:
        from lljx.models.embedded import embedded_gguf_path

        return embedded_gguf_path()
    return spec if spec.endswith(".gguf") and os.path.isfile(spec) else None


def _identity(path: str) -> tuple[str, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns
