"""lljx: Llama-family inference in JAX with a Rust tokenizer, built to measure where jax.jit should go."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["LayerParams", "Llama3RopeScaling", "ModelConfig", "Params", "__version__"]

if TYPE_CHECKING:
    from lljx.config import Llama3RopeScaling, ModelConfig
    from lljx.params import LayerParams, Params

# Imported on first use: `import lljx.cli` (or the tokenizer) must not wait for JAX, so a
# command can read its model's header and build its tokenizer while JAX imports.
_LAZY = {"Llama3RopeScaling": "lljx.config", "ModelConfig": "lljx.config", "LayerParams": "lljx.params", "Params": "lljx.params"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lljx' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
