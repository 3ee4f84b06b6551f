"""Errors raised while finding or reading a model; every message is one line that names the file or spec."""

from __future__ import annotations

import os


def _one_line(text: str) -> str:
    # Messages end up in CLI output and HTTP error bodies, where a stray newline breaks the layout.
    return " ".join(str(text).split())


class ModelError(Exception):
    """Base class for everything that can go wrong before a model is ready to run."""


class ModelNotFoundError(ModelError, LookupError):
    """No model matches a spec; the message lists what was tried."""

    def __init__(self, spec: str | None, tried: list[str] | tuple[str, ...] | str) -> None:
        self.spec = spec
        self.tried = (tried,) if isinstance(tried, str) else tuple(tried)
        super().__init__(_one_line(f"model {spec!r} not found: " + "; ".join(self.tried)))


class ModelFileError(ModelError, ValueError):
    """A model file or folder exists but cannot be used: malformed, truncated or unsupported."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = os.fspath(path)
        self.reason = _one_line(message)
        super().__init__(f"{self.path}: {self.reason}")
