"""Where the bench keeps what it converts or measures once: $XDG_CACHE_HOME/lljx (default ~/.cache/lljx)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lljx"
    root.mkdir(parents=True, exist_ok=True)
    return root


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (a cache entry is never worth a crash)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Write through a temporary file so a reader never sees half a file, even with two benches at once."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(value, indent=2), encoding="utf-8")
    partial.replace(path)
