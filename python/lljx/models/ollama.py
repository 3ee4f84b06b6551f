"""Find models in a local Ollama store: names, manifests, and the GGUF blob each one points to."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lljx.models.errors import ModelFileError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
# Manifests, templates and parameter layers are a few KB; a bigger one is not what it claims to be.
MAX_SMALL_FILE = 1 << 20

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """How `ollama list` shows it: default host and namespace left out."""
        if self.host == DEFAULT_HOST:
            prefix = "" if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/"
        else:
            prefix = f"{self.host}/{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    def manifest_path(self, root: Path) -> Path:
        return root / "manifests" / self.host / self.namespace / self.model / self.tag


@dataclass(frozen=True)
class OllamaModel:
    """A manifest resolved to its blobs."""

    name: OllamaName
    manifest: Path
    blob: Path
    size: int  # as the manifest declares it
    template: str | None
    params: dict[str, Any]


def store_root() -> Path:
    """$OLLAMA_MODELS, else ~/.ollama/models, as Ollama itself decides."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def parse_name(spec: str) -> OllamaName | None:
    """`name`, `name:tag`, `namespace/name:tag`, `host/namespace/name:tag`; None if it is not a valid name."""
    spec = spec.strip()
    if not spec or "@" in spec or "\\" in spec:
        return None
    rest, tag = spec, DEFAULT_TAG
    head, sep, last = spec.rpartition(":")
    if sep and "/" not in last:  # a colon in the host (a port) is not a tag
        rest, tag = head, last
    parts = rest.split("/")
    if len(parts) > 3 or not all(parts):
        return None
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    for pattern, part in ((_HOST, host), (_NAMESPACE, namespace), (_MODEL, model), (_TAG, tag)):
        if not pattern.fullmatch(part):
            return None
    return OllamaName(host, namespace, model, tag)


def _read_small(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SMALL_FILE + 1)
    except OSError as e:
        raise ModelFileError(path, f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > MAX_SMALL_FILE:
        raise ModelFileError(path, f"{what} is larger than {MAX_SMALL_FILE} bytes")
    return data


def blob_path(root: Path, digest: Any, manifest: Path) -> Path:
    """blobs/sha256-<hex>; a digest of any other form is a broken manifest (and never a path to follow)."""
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise ModelFileError(manifest, f"bad layer digest {digest!r} (expected sha256:<64 hex digits>)")
    return root / "blobs" / f"sha256-{m.group(1)}"


def read_manifest(root: Path, name: OllamaName, manifest: Path) -> OllamaModel:
    """Parse a manifest and locate its model blob (checked to exist with the declared size)."""
    try:
        doc = json.loads(_read_small(manifest, "manifest"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(manifest, f"manifest is not JSON: {e}") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ModelFileError(manifest, "manifest has no layers list")
    by_type: dict[str, dict[str, Any]] = {}
    for layer in layers:
        by_type.setdefault(str(layer.get("mediaType")), layer)
    model_layer = by_type.get(MODEL_MEDIA_TYPE)
    if model_layer is None:
        raise ModelFileError(manifest, f"manifest has no {MODEL_MEDIA_TYPE} layer")
    blob = blob_path(root, model_layer.get("digest"), manifest)
    if not blob.is_file():
        raise ModelFileError(manifest, f"model blob {blob} is missing")
    declared = model_layer.get("size")
    actual = blob.stat().st_size
    if isinstance(declared, int) and declared != actual:
        raise ModelFileError(blob, f"blob has {actual} bytes but the manifest says {declared} (incomplete download?)")

    template = None
    if (layer := by_type.get(TEMPLATE_MEDIA_TYPE)) is not None:
        template = _read_small(blob_path(root, layer.get("digest"), manifest), "template").decode("utf-8", "replace")
    params: dict[str, Any] = {}
    if (layer := by_type.get(PARAMS_MEDIA_TYPE)) is not None:
        path = blob_path(root, layer.get("digest"), manifest)
        try:
            loaded = json.loads(_read_small(path, "parameters"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFileError(path, f"parameters layer is not JSON: {e}") from None
        params = loaded if isinstance(loaded, dict) else {}
    return OllamaModel(name, manifest, blob, actual, template, params)


def find_manifest(name: OllamaName, root: Path) -> Path | None:
    """The manifest file for a name; Ollama stores names case-insensitively, so try the lowercased path too."""
    for candidate in (
        name.manifest_path(root),
        OllamaName(*(p.lower() for p in (name.host, name.namespace, name.model, name.tag))).manifest_path(root),
    ):
        if candidate.is_file():
            return candidate
    return None


def list_store(root: Path | None = None) -> list[tuple[OllamaName, Path]]:
    """Every manifest in the store as (name, manifest path), sorted by display name."""
    root = store_root() if root is None else root
    base = root / "manifests"
    if not base.is_dir():
        return []
    out = []
    for manifest in base.glob("*/*/*/*"):
        if manifest.is_file():
            host, namespace, model, tag = manifest.relative_to(base).parts
            out.append((OllamaName(host, namespace, model, tag), manifest))
    return sorted(out, key=lambda item: item[0].display)
