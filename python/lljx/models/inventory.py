"""List known models (embedded, Ollama store, Meta checkpoints, given paths) from headers only; a broken entry carries its error."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lljx.models import embedded, meta, ollama, synthetic
from lljx.models.errors import ModelError
from lljx.models.gguf import architecture, format_bytes, parameter_count, quantization
from lljx.models.gguf_file import read_gguf_header
from lljx.models.model import ResolvedModel
from lljx.models.resolver import resolve
from lljx.models.safetensors import describe_hf


@dataclass(frozen=True)
class ModelInfo:
    """One row of `lljx models`."""

    name: str
    source: str  # what to pass to load_model to get this model
    path: str
    format: str  # "gguf" | "hf" | "meta" | "" when unresolvable
    origin: str  # "embedded" | "ollama" | "checkpoints" | "file" | "folder"
    file_size: int | None = None
    n_params: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    architecture: str | None = None
    error: str | None = None  # why the entry cannot be loaded; the other fields may then be None
    # Bytes stored per tensor format (GGUF types, or safetensors dtypes), largest first.
    formats: dict[str, int] | None = None
    provenance: str | None = None  # where the file comes from, when lljx fetches it (the embedded model)

    def as_dict(self) -> dict[str, Any]:
        """Every field, plus `size`, `params`, `context` and `stored` (bytes per format) formatted for a table (Ollama's units)."""
        return {
            **asdict(self),
            "size": human_size(self.file_size),
            "params": human_count(self.n_params),
            "context": self.context_length,
            "stored": describe_formats(self.formats),
        }


def describe_formats(formats: dict[str, int] | None) -> str | None:
    """"Q4_K 560 MB, Q6_K 215 MB, F32 0.3 MB": each format's share of the file."""
    if not formats:
        return None
    return ", ".join(f"{name} {human_size(size) if size >= 1e6 else f'{size / 1e6:.1f} MB'}" for name, size in formats.items())


def human_size(n: int | None) -> str | None:
    """Bytes in decimal units, as `ollama list` prints them: 98 MB, 2.0 GB."""
    if n is None:
        return None
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GB" else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def human_count(n: int | None) -> str | None:
    """A parameter count as Ollama's parameter_size: 3.2B, 135M, 107K."""
    if n is None:
        return None
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}" if unit == "B" else f"{n / scale:.0f}{unit}"
    return str(n)


def describe(resolved: ResolvedModel) -> ModelInfo:
    """Read only headers: GGUF's, config.json and safetensors' (HF), params.json and pickles (Meta); never a weight."""
    base = ModelInfo(
        name=resolved.name, source=resolved.source, path=resolved.path, format=resolved.format, origin=resolved.origin
    )
    try:
        if resolved.format == "gguf":
            gf = read_gguf_header(resolved.path)
            arch = gf.fields.get("general.architecture")
            ctx = gf.fields.get(f"{arch}.context_length")
            info = replace(
                base,
                file_size=gf.file_size,
                n_params=parameter_count(gf),
                quantization=quantization(gf),
                context_length=int(ctx) if isinstance(ctx, int) else None,
                architecture=str(arch) if arch is not None else None,
                formats=format_bytes(gf),
            )
            try:
                architecture(gf)
            except ModelError as e:  # listed with its numbers, but flagged: we cannot run it
                return replace(info, error=str(e))
            return info
        if resolved.format == "meta":
            from lljx.models.meta import describe_meta

            config, n_params, dtype, size = describe_meta(Path(resolved.path))
            formats = None
        else:
            config, n_params, dtype, size, formats = describe_hf(Path(resolved.path))
        return replace(
            base,
            file_size=size,
            n_params=n_params,
            quantization=dtype,
            context_length=config.context_length,
            architecture="llama",
            formats=formats,
        )
    except ModelError as e:
        return replace(base, file_size=resolved.file_size, error=str(e))


def list_models(
    paths: Iterable[str] = (),
    *,
    include_embedded: bool = True,
    ollama_root: str | os.PathLike[str] | None = None,
    checkpoints_root: str | os.PathLike[str] | None = None,
) -> list[ModelInfo]:
    """The embedded model, every Ollama manifest, every checkpoint in Meta's store, then each given path."""
    rows: list[ModelInfo] = []
    if include_embedded:
        rows.append(embedded_row())
    root = ollama.store_root() if ollama_root is None else Path(ollama_root)
    for name, manifest in ollama.list_store(root):
        rows.append(_row(name.display, "ollama", root, fallback_path=str(manifest)))
    checkpoints = meta.checkpoints_root() if checkpoints_root is None else Path(checkpoints_root)
    for folder in meta.store_entries(checkpoints):
        rows.append(_row(str(folder), "checkpoints", None, name=folder.name))
    for p in paths:
        rows.append(_row(p, "file", None))
    return rows


def embedded_row() -> ModelInfo:
    """The embedded model with where it comes from; before its first-use download, only what is known of it."""
    note = embedded.provenance()
    if embedded.embedded_gguf_path() is None:  # listing never downloads
        return ModelInfo(
            name=embedded.NAME, source=embedded.NAME, path=str(embedded.cache_path()), format="gguf",
            origin="embedded", file_size=embedded.WHEEL.size, provenance=note,
        )  # fmt: skip
    return replace(_row(embedded.NAME, "embedded", None), provenance=note)


def _row(spec: str, origin: str, root: Path | None, fallback_path: str = "", name: str | None = None) -> ModelInfo:
    if synthetic.is_synthetic(spec):
        return _synthetic_row(spec)
    try:
        info = describe(resolve(spec, ollama_root=root))
    except ModelError as e:
        return ModelInfo(
            name=name or spec, source=name or spec, path=fallback_path or spec, format="", origin=origin, error=str(e)
        )
    # A checkpoint in Meta's store is listed by the name that loads it, as Ollama's entries are.
    return replace(info, source=name, origin=origin) if name is not None else info


def _synthetic_row(spec: str) -> ModelInfo:
    """A synthetic model from its file when made, else from its shape alone: listing never writes gigabytes."""
    try:
        parsed = synthetic.parse(spec)
    except ModelError as e:
        return ModelInfo(name=spec, source=spec, path=spec, format="", origin="synthetic", error=str(e))
    path = synthetic.cached_path(parsed)
    if path.exists():
        return describe(ResolvedModel(name=parsed.canonical, source=spec, format="gguf", path=str(path),
                                      origin="synthetic", file_size=path.stat().st_size))
    return ModelInfo(
        name=parsed.canonical, source=spec, path=f"{path} (made on first use)", format="gguf", origin="synthetic",
        n_params=parsed.shape.n_params, quantization=parsed.format.upper(),
        context_length=parsed.shape.context_length, architecture="llama",
    )
