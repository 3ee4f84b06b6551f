"""Turn a model spec (nothing, a short name, a path, a Meta checkpoint or Ollama name, a synthetic shape) into a file or folder, reading no weights.

A synthetic spec is the one exception that may write: its file is made on first use (see synthetic.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from lljx.models import embedded, meta, ollama, synthetic
from lljx.models.errors import ModelFileError, ModelNotFoundError
from lljx.models.gguf_file import MAGIC
from lljx.models.model import Origin, ResolvedModel
from lljx.models.safetensors import is_hf_folder, shard_files

# Specs with these endings are meant as files; a missing one is never looked up as an Ollama name.
FILE_SUFFIXES = (".gguf", ".safetensors", ".json")


def resolve(spec: str | None, *, ollama_root: str | os.PathLike[str] | None = None) -> ResolvedModel:
    """Where `spec` points: the embedded model, a GGUF file, an HF or Meta checkpoint folder, a checkpoint
    in Meta's store (~/.llama/checkpoints/NAME), or an Ollama store entry.

    Raises ModelNotFoundError (listing what was tried) when nothing matches, and ModelFileError
    when something matches but is unusable (an Ollama manifest naming a missing blob, a folder
    without config.json, a file that is not GGUF).
    """
    if embedded.is_embedded_name(spec):
        return _embedded(spec)
    assert spec is not None
    if synthetic.is_synthetic(spec):
        return _synthetic(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(spec, path)
    if path.is_file():
        return _file(spec, path)
    tried = [f"no file or folder {str(path)!r}"]
    if spec.lower().endswith(FILE_SUFFIXES) or spec.startswith((".", "~", os.sep)):
        raise ModelNotFoundError(spec, tried)
    if not any(c in spec for c in (os.sep, "/", ":")):  # a bare name may be a checkpoint in Meta's store
        root = meta.checkpoints_root()
        checkpoint = meta.find_checkpoint(spec, root)
        if checkpoint is not None:
            return _folder(spec, checkpoint, origin="checkpoints")
        tried.append(f"no Meta checkpoint {str(root / spec)!r}")
    return resolve_ollama(spec, ollama_root=ollama_root, tried=tried)


def resolve_ollama(
    spec: str, *, ollama_root: str | os.PathLike[str] | None = None, tried: list[str] | None = None
) -> ResolvedModel:
    """Only the Ollama store: `spec` is never read as a path (a server must not open what a client names)."""
    tried = [] if tried is None else tried
    name = ollama.parse_name(spec)
    if name is None:
        tried.append("not an Ollama model name")
        tried.append(f"not an embedded model ({', '.join(embedded.ALIASES)})")
        raise ModelNotFoundError(spec, tried)
    root = ollama.store_root() if ollama_root is None else Path(ollama_root)
    manifest = ollama.find_manifest(name, root)
    if manifest is None:
        tried.append(f"no Ollama manifest {str(name.manifest_path(root))!r}")
        tried.append(f"not an embedded model ({', '.join(embedded.ALIASES)})")
        raise ModelNotFoundError(spec, tried)
    found = ollama.read_manifest(root, name, manifest)
    return ResolvedModel(
        name=name.display,
        source=spec,
        format="gguf",
        path=str(found.blob),
        origin="ollama",
        file_size=found.size,
        ollama_template=found.template,
        ollama_params=found.params,
    )


def _embedded(spec: str | None) -> ResolvedModel:
    path = embedded.ensure_embedded_gguf()  # downloaded on first use
    return ResolvedModel(
        name=embedded.NAME,
        source=spec or embedded.NAME,
        format="gguf",
        path=path,
        origin="embedded",
        file_size=os.path.getsize(path),
    )


def _synthetic(spec: str) -> ResolvedModel:
    parsed, path = synthetic.resolved(spec)
    return ResolvedModel(
        name=parsed.canonical, source=spec, format="gguf", path=str(path), origin="synthetic",
        file_size=path.stat().st_size,
    )


def _folder(spec: str, path: Path, origin: Origin = "folder") -> ResolvedModel:
    if not (path / "config.json").is_file() and (path / meta.PARAMS_FILE).is_file():
        return meta.resolved_folder(spec, path, origin)
    if not (path / "config.json").is_file():
        raise ModelFileError(path, "not a model folder: no config.json (HF) or params.json (Meta checkpoint)")
    if not is_hf_folder(path):
        raise ModelFileError(path, "no *.safetensors weights in the folder (only safetensors are supported)")
    size = sum(f.stat().st_size for f in shard_files(path))
    return ResolvedModel(
        name=path.resolve().name, source=spec, format="hf", path=str(path), origin="folder", file_size=size
    )


def _file(spec: str, path: Path) -> ResolvedModel:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from None
    if head != MAGIC and path.suffix.lower() != ".gguf":
        raise ModelFileError(path, "not a GGUF file (and not a model folder)")
    name = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    return ResolvedModel(
        name=name, source=spec, format="gguf", path=str(path), origin="file", file_size=path.stat().st_size
    )
