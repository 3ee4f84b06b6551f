"""Which models the server may open, by the names clients send, and their /api/tags and /api/show records.

A client's model name is looked up among the embedded model, the `--model` specs given at
start and the Ollama store, never opened as a path: a request must not read arbitrary files.
Everything here reads headers only, never weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lljx.models import ModelError, ModelInfo, ModelNotFoundError, ResolvedModel, embedded, list_models, resolve
from lljx.models.inventory import describe, human_count
from lljx.models.resolver import resolve_ollama
from lljx.server.schemas import RequestError

LATEST = ":latest"
# Ollama's library name for the embedded model: `lljx bench --peer ollama` asks for it, and a
# store without it pulled gets the embedded file (a pulled one is served from the store).
EMBEDDED_OLLAMA_PREFIX = "smollm2:135m"


def not_found(name: str) -> RequestError:
    return RequestError(404, f'model "{name}" not found')


@dataclass(frozen=True)
class Catalog:
    """The embedded model, the operator's `--model` specs (resolved once) and the Ollama store."""

    extra: tuple[ResolvedModel, ...] = ()
    ollama_root: str | None = None

    @classmethod
    def from_specs(cls, specs: Iterable[str], *, ollama_root: str | None = None) -> Catalog:
        """Resolve the operator's specs up front, so a bad `--model` fails at start, not on a request."""
        return cls(tuple(resolve(spec, ollama_root=ollama_root) for spec in specs), ollama_root)

    def lookup(self, name: str) -> ResolvedModel:
        """The model a client means by `name` (with or without ":latest"); 404 when there is none."""
        bare = name[: -len(LATEST)] if name.lower().endswith(LATEST) else name
        if embedded.is_embedded_name(bare):
            return resolve(embedded.NAME)
        for resolved in self.extra:
            if name in (resolved.source, resolved.name) or bare in (resolved.source, resolved.name):
                return resolved
        try:
            return resolve_ollama(name, ollama_root=self.ollama_root)
        except ModelNotFoundError:
            if name.lower().startswith(EMBEDDED_OLLAMA_PREFIX):
                return resolve(embedded.NAME)
            raise not_found(name) from None
        except ModelError as error:  # found, but its blobs are unusable
            raise RequestError(500, f'model "{name}" cannot be loaded: {error}') from None

    def rows(self) -> list[ModelInfo]:
        """Every loadable model once, for /api/tags (broken entries are left out)."""
        rows = list_models([], ollama_root=self.ollama_root) + [describe(r) for r in self.extra]
        seen: set[str] = set()
        out = []
        for row in rows:
            if row.error is None and row.path not in seen:
                seen.add(row.path)
                out.append(row)
        return out


def modified_at(path: str) -> str:
    try:
        return timestamp(os.path.getmtime(path))
    except OSError:
        return timestamp(0)


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC with nanosecond digits, as Ollama writes created_at."""
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def digest(path: str) -> str:
    """A stable identity for a model file: an Ollama blob's own sha256, else a hash of path, size and mtime.

    Hashing the contents of a multi-gigabyte file on every listing would be too slow.
    """
    name = Path(path).name
    if name.startswith("sha256-") and len(name) == 71:
        return name.removeprefix("sha256-")
    try:
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
    except OSError:
        key = path
    return hashlib.sha256(key.encode()).hexdigest()


def details(info: ModelInfo) -> dict[str, Any]:
    family = info.architecture or "llama"
    return {
        "parent_model": "",
        "format": info.format,
        "family": family,
        "families": [family],
        "parameter_size": human_count(info.n_params) or "",
        "quantization_level": info.quantization or "",
    }


def tag_entry(info: ModelInfo) -> dict[str, Any]:
    """One /api/tags row, shaped as Ollama's."""
    return {
        "name": info.name,
        "model": info.name,
        "modified_at": modified_at(info.path),
        "size": info.file_size or 0,
        "digest": digest(info.path),
        "details": details(info),
    }


def show(resolved: ResolvedModel, *, verbose: bool) -> dict[str, Any]:
    """/api/show: details, model_info from the GGUF header (config.json or params.json for folders), template, parameters."""
    info = describe(resolved)
    if info.error is not None:
        raise RequestError(500, f'model "{resolved.name}" cannot be loaded: {info.error}')
    model_info, template = header_info(resolved, verbose=verbose)
    model_info.setdefault("general.architecture", info.architecture or "llama")
    model_info.setdefault("general.parameter_count", info.n_params)
    template = resolved.ollama_template or template or ""
    parameters = "\n".join(
        f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}"
        for key, values in resolved.ollama_params.items()
        for v in (values if isinstance(values, list) else [values])
    )
    modelfile = f"# Modelfile generated by lljx\nFROM {resolved.path}\n"
    if template:
        modelfile += f'TEMPLATE """{template}"""\n'
    modelfile += "".join(f"PARAMETER {line}\n" for line in parameters.splitlines())
    return {
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": details(info),
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": modified_at(resolved.path),
    }


def header_info(resolved: ResolvedModel, *, verbose: bool) -> tuple[dict[str, Any], str | None]:
    """(model_info, chat template) without reading weights; token arrays only when verbose, as Ollama does."""
    if resolved.format in ("hf", "meta"):
        from lljx.models.hf_config import read_json

        config = read_json(Path(resolved.path) / ("config.json" if resolved.format == "hf" else "params.json"))
        return {f"llama.{k}" if not k.startswith("general.") else k: v for k, v in config.items()}, None
    from lljx.models.gguf import TOKEN_ARRAYS, metadata
    from lljx.models.gguf_file import read_gguf_header

    header = read_gguf_header(resolved.path)
    info = metadata(header)
    template = info.pop("tokenizer.chat_template", None)
    for key in TOKEN_ARRAYS:
        if key in header.fields:
            value = header.fields[key]
            info[key] = (value.tolist() if hasattr(value, "tolist") else list(value)) if verbose else None
    return info, template if isinstance(template, str) else None

