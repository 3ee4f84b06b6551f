"""What names a server client may ask for, and the /api/tags and /api/show records, from headers only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lljx.server.catalog import Catalog, digest, show, tag_entry, timestamp
from lljx.server.schemas import RequestError


def add_to_store(root: Path, name: str, gguf: Path) -> None:
    """A minimal Ollama store entry: manifest plus the GGUF as its model blob."""
    data = gguf.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{sha}").write_bytes(data)
    model, tag = name.split(":")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha}", "size": len(data)}
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))


@pytest.fixture
def catalog(tmp_path, random_llama) -> Catalog:
    store = tmp_path / "store"
    add_to_store(store, "tiny:latest", random_llama[0])
    return Catalog.from_specs([str(random_llama[1])], ollama_root=str(store))


def test_lookup_by_the_names_clients_send(catalog, random_llama):
    for name in ("smollm2", "smollm2:latest", "smollm2-135m-instruct", "SmolLM2-135M-Instruct:latest", "smollm2:135m"):
        assert catalog.lookup(name).origin == "embedded"
    assert catalog.lookup("tiny").origin == "ollama" and catalog.lookup("tiny:latest").name == "tiny:latest"
    folder = catalog.lookup(random_llama[1].name)  # a --model spec, by its name
    assert folder.origin == "folder" and catalog.lookup(str(random_llama[1])) == folder


@pytest.mark.parametrize("name", ["nope", "tiny:other", "smollm2:360m", "/etc/passwd", "../secrets.gguf", "."])
def test_anything_else_is_404_and_never_opened_as_a_path(catalog, name):
    with pytest.raises(RequestError) as missing:
        catalog.lookup(name)
    assert missing.value.status == 404 and missing.value.message == f'model "{name}" not found'


def test_a_gguf_path_not_given_at_start_is_refused(catalog, random_llama):
    with pytest.raises(RequestError):
        catalog.lookup(str(random_llama[0]))


def test_tags_rows_are_ollama_shaped(catalog):
    rows = [tag_entry(row) for row in catalog.rows()]
    names = [row["name"] for row in rows]
    assert names[0] == "smollm2-135m-instruct" and "tiny:latest" in names and len(rows) == 3
    for row in rows:
        assert set(row) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert len(row["digest"]) == 64 and row["size"] > 0 and row["modified_at"].endswith("Z")
        assert row["details"]["family"] == "llama" and row["details"]["format"] in ("gguf", "hf")
    store_row = rows[names.index("tiny:latest")]
    assert store_row["digest"] == Path(catalog.lookup("tiny").path).name.removeprefix("sha256-")


def test_show_from_headers(catalog):
    shown = show(catalog.lookup("tiny"), verbose=False)
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["model_info"]["tokenizer.ggml.tokens"] is None
    assert shown["details"]["parameter_size"] and shown["capabilities"] == ["completion"]
    verbose = show(catalog.lookup("tiny"), verbose=True)
    assert isinstance(verbose["model_info"]["tokenizer.ggml.tokens"], list)
    hf = show(catalog.lookup(catalog.extra[0].name), verbose=False)
    assert hf["details"]["format"] == "hf" and any(key.startswith("llama.") for key in hf["model_info"])


def test_digest_and_timestamp_formats(tmp_path):
    blob = tmp_path / ("sha256-" + "ab" * 32)
    blob.write_bytes(b"x")
    assert digest(str(blob)) == "ab" * 32
    assert digest(str(tmp_path / "missing")) != digest(str(blob))
    assert timestamp(0) == "1970-01-01T00:00:00.000000000Z"
