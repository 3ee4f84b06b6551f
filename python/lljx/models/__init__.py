"""Where weights come from: resolve a spec, load a GGUF file, an HF or Meta checkpoint folder or an Ollama blob, list what exists."""

from __future__ import annotations

import importlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lljx.models.errors import ModelError, ModelFileError, ModelNotFoundError
    from lljx.models.inventory import ModelInfo, list_models
    from lljx.models.model import Model, ResolvedModel
    from lljx.models.resolver import resolve
    from lljx.models.vocab import TokenizerSpec

# Imported on first use, so that reading a GGUF header or building its tokenizer (the
# `gguf_file`, `vocab` and `prefetch` modules) never waits for JAX to import.
_LAZY = {
    "ModelError": "lljx.models.errors",
    "ModelFileError": "lljx.models.errors",
    "ModelNotFoundError": "lljx.models.errors",
    "ModelInfo": "lljx.models.inventory",
    "list_models": "lljx.models.inventory",
    "Model": "lljx.models.model",
    "ResolvedModel": "lljx.models.model",
    "resolve": "lljx.models.resolver",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lljx.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def _check_dtype(dtype: str) -> None:
    from lljx.config import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


def load_model(spec: str | None, *, dtype: str = "f32") -> Model:
    """Resolve `spec` (None means the embedded SmolLM2) and load it with weights at `dtype` (f32, bf16, f16, int8)."""
    from lljx.models.resolver import resolve

    _check_dtype(dtype)
    return load_resolved(resolve(spec), dtype=dtype)


def load_resolved(resolved: ResolvedModel, *, dtype: str = "f32") -> Model:
    """Load a model already resolved (e.g. a row from list_models)."""
    if resolved.format == "gguf":
        from lljx.models.gguf import load_gguf

        return load_gguf(resolved, dtype)
    if resolved.format == "meta":
        from lljx.models.meta import load_meta

        return load_meta(resolved, dtype)
    from lljx.models.safetensors import load_hf

    return load_hf(resolved, dtype)


def load_model_early(spec: str | None, *, dtype: str = "f32") -> tuple[Model, Future[Model]]:
    """The model with its weights as shapes only (jax.ShapeDtypeStruct), at once, and the loaded
    model from a background thread: programs can compile while the weights decode. A format
    that cannot describe its weights before reading them loads synchronously."""
    from lljx.models.resolver import resolve

    _check_dtype(dtype)
    resolved = resolve(spec)
    if resolved.format != "gguf":
        model = load_resolved(resolved, dtype=dtype)
        done: Future[Model] = Future()
        done.set_result(model)
        return model, done
    from lljx.models import prefetch
    from lljx.models.gguf import load_gguf
    from lljx.models.gguf_file import read_gguf_header

    early = prefetch.result(resolved.path)  # read (and its tokenizer built) while JAX imported
    header = early.header if early is not None else read_gguf_header(resolved.path)  # once for both
    skeleton = load_gguf(resolved, dtype, abstract=True, header=header)
    if early is not None:
        vars(skeleton)["tokenizer"] = early.tokenizer
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lljx-load")
    loading = pool.submit(load_gguf, resolved, dtype, header=header)
    pool.shutdown(wait=False)
    return skeleton, loading


def tokenizer_spec(spec: str | None) -> TokenizerSpec:
    """The tokenizer recipe of a model, from its GGUF header or tokenizer files; no weights are read."""
    from lljx.models.resolver import resolve
    from lljx.models.vocab import gguf_vocab

    resolved = resolve(spec)
    if resolved.format == "gguf":
        from lljx.models.gguf_file import read_gguf_header

        return gguf_vocab(read_gguf_header(resolved.path))[0]
    if resolved.format == "meta":
        from lljx.models.meta import tokenizer_file

        return tokenizer_file(Path(resolved.path))
    from lljx.models.hf_config import read_json
    from lljx.models.hf_tokenizer import hf_tokenizer

    folder = Path(resolved.path)
    return hf_tokenizer(folder, read_json(folder / "config.json")).spec


def load_tokenizer(spec: str | None) -> Any:
    """lljx.tokenizer.Tokenizer of a model (None: the embedded one) without loading its weights."""
    from lljx.models.vocab import build_tokenizer

    return build_tokenizer(tokenizer_spec(spec))


__all__ = [
    "Model",
    "ModelError",
    "ModelFileError",
    "ModelInfo",
    "ModelNotFoundError",
    "ResolvedModel",
    "list_models",
    "load_model",
    "load_resolved",
    "load_tokenizer",
    "resolve",
    "tokenizer_spec",
]
