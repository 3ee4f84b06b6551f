"""Load a Hugging Face Llama folder: config.json, (sharded) *.safetensors, tokenizer.json, tokenizer_config.json."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from lljx.config import Llama3RopeScaling, ModelConfig
from lljx.models.dequant import NP_DTYPES
from lljx.models.errors import ModelFileError
from lljx.models.model import Model, ResolvedModel
from lljx.models.vocab import TokenizerFile, stop_token_ids
from lljx.params import LayerParams, Params

ARCHITECTURES = ("LlamaForCausalLM",)
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
INDEX_FILE = "model.safetensors.index.json"

# LayerParams field -> (tensor name under model.layers.{i}., stored [out, in] and so transposed?)
_LAYER_TENSORS: dict[str, tuple[str, bool]] = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "ffn_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}
NORMS = ("attn_norm", "ffn_norm")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelFileError(path, "missing")
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ModelFileError(path, "expected a JSON object")
    return doc


def config_from_hf(path: Path, cfg: dict[str, Any], dtype: str = "f32") -> ModelConfig:
    """ModelConfig from a config.json dict; `path` only names the file in errors."""

    def fail(message: str) -> ModelFileError:
        return ModelFileError(path, message)

    archs = [a for a in cfg.get("architectures") or [] if isinstance(a, str)] if isinstance(cfg.get("architectures"), list) else []
    if not (set(archs) & set(ARCHITECTURES)) and cfg.get("model_type") != "llama":
        raise fail(f"architecture {archs or cfg.get('model_type')!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise fail("attention or MLP biases are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise fail(f"activation {cfg['hidden_act']!r} is not supported (only silu)")

    def num(key: str, kind: type = int, default: Any = ...) -> Any:
        value = cfg.get(key, default)
        if value is ... or value is None:
            if default is ...:
                raise fail(f"missing {key!r}")
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise fail(f"{key!r} should be {kind.__name__}, got {value!r}")
        if not 0 < value < (1 << 24 if kind is int else float("inf")):
            raise fail(f"{key!r} = {value!r} is out of range")
        return kind(value)

    d_model, n_heads = num("hidden_size"), num("num_attention_heads")
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise fail(f"rope_scaling should be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise fail(f"rope_theta should be a positive number, got {theta!r}")
    scaling, factors = None, None
    d_head = num("head_dim", int, d_model // n_heads)
    if rope_type == "llama3":
        try:
            scaling = Llama3RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_context_length=int(rope["original_max_position_embeddings"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise fail(f"incomplete llama3 rope_scaling: {e!r}") from None
    elif rope_type == "linear":
        factor = rope.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise fail(f"linear rope_scaling needs a positive factor, got {factor!r}")
        factors = (float(factor),) * (d_head // 2)
    elif rope_type != "default":
        raise fail(f"RoPE scaling type {rope_type!r} is not supported")
    fields = dict(
        vocab_size=num("vocab_size"),
        d_model=d_model,
        n_layers=num("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=num("num_key_value_heads", int, n_heads),
        d_head=d_head,
        d_ffn=num("intermediate_size"),
        rope_theta=float(theta),
        norm_eps=num("rms_norm_eps", float, 1e-6),
        context_length=num("max_position_embeddings"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        rope_freq_factors=factors,
        dtype=dtype,
    )
    try:
        return ModelConfig(**fields)
    except ValueError as e:  # ModelConfig's own consistency checks
        raise fail(str(e)) from None


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files holding the weights: those named by the index if there is one, else all of them."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(index, "no weight_map")
        names = sorted({str(v) for v in weight_map.values()})
        for n in names:
            # Shard names are plain file names; anything with a path in it could point outside the folder.
            if "/" in n or "\\" in n or n in (".", "..") or not (folder / n).is_file():
                raise ModelFileError(index, f"shard {n!r} is missing")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(folder, "no *.safetensors files")
    return files


class _Shards(contextlib.ExitStack):
    """All shards open at once, with a tensor-name -> shard map; every read error is a ModelFileError."""

    def __init__(self, folder: Path, files: list[Path]) -> None:
        super().__init__()
        self.folder = folder
        self.where: dict[str, tuple[Path, Any]] = {}
        for path in files:
            try:
                handle = self.enter_context(safe_open(str(path), framework="numpy"))
            except (SafetensorError, OSError) as e:
                self.close()
                raise ModelFileError(path, f"not a readable safetensors file: {e}") from None
            for key in handle.keys():
                self.where[key] = (path, handle)

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        if name not in self.where:
            raise ModelFileError(self.folder, f"missing tensor {name!r}")
        _, handle = self.where[name]
        s = handle.get_slice(name)
        return tuple(s.get_shape()), s.get_dtype()

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        got, dtype = self.info(name)
        path = self.where[name][0]
        if got != shape:
            raise ModelFileError(path, f"tensor {name!r} has shape {list(got)}, expected {list(shape)}")
        if dtype not in FLOAT_DTYPES:
            raise ModelFileError(path, f"tensor {name!r} has unsupported dtype {dtype} (supported: {', '.join(FLOAT_DTYPES)})")

    def read(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.check(name, shape)
        path, handle = self.where[name]
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ModelFileError(path, f"cannot read tensor {name!r}: {e}") from None

    def commonest_dtype(self) -> tuple[int, str]:
        """(total elements, the dtype holding most of them)."""
        total, dtypes = 0, Counter[str]()
        for name in self.where:
            shape, dtype = self.info(name)
            n = int(np.prod(shape, dtype=np.int64))
            total += n
            dtypes[dtype] += n
        return total, dtypes.most_common(1)[0][0] if dtypes else "unknown"


def params_from_hf(folder: Path, config: ModelConfig) -> tuple[Params, str]:
    """Weights at the compute dtype (norms f32), plus the commonest dtype in the files (the "quantization")."""
    c = config
    q, kv = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    stored = {  # as saved: [out, in]
        "attn_norm": (c.d_model,), "wq": (q, c.d_model), "wk": (kv, c.d_model), "wv": (kv, c.d_model),
        "wo": (c.d_model, q), "ffn_norm": (c.d_model,), "w_gate": (c.d_ffn, c.d_model),
        "w_up": (c.d_ffn, c.d_model), "w_down": (c.d_model, c.d_ffn),
    }  # fmt: skip
    dt, f32 = NP_DTYPES[c.dtype], NP_DTYPES["f32"]
    with _Shards(folder, shard_files(folder)) as shards:
        _, stored_dtype = shards.commonest_dtype()
        # Check every name, shape and dtype before the first big read, so a broken folder fails fast.
        for leaf, (suffix, _) in _LAYER_TENSORS.items():
            for i in range(c.n_layers):
                shards.check(f"model.layers.{i}.{suffix}", stored[leaf])
        shards.check("model.embed_tokens.weight", (c.vocab_size, c.d_model))
        shards.check("model.norm.weight", (c.d_model,))
        if not c.tie_embeddings:
            shards.check("lm_head.weight", (c.vocab_size, c.d_model))

        def read(name: str, shape: tuple[int, ...], dtype: np.dtype, transpose: bool = False) -> Any:
            w = shards.read(name, shape)
            return jnp.asarray(np.ascontiguousarray(w.T if transpose else w, dtype=dtype))

        layers = tuple(
            LayerParams(**{
                leaf: read(f"model.layers.{i}.{suffix}", stored[leaf], f32 if leaf in NORMS else dt, transpose)
                for leaf, (suffix, transpose) in _LAYER_TENSORS.items()
            })  # fmt: skip
            for i in range(c.n_layers)
        )
        final_norm = read("model.norm.weight", (c.d_model,), f32)
        # The head is kept [d_model, vocab]; a tied model keeps only that (the transposed embeddings).
        if c.tie_embeddings:
            embed, head = None, read("model.embed_tokens.weight", (c.vocab_size, c.d_model), dt, transpose=True)
        else:
            embed = read("model.embed_tokens.weight", (c.vocab_size, c.d_model), dt)
            head = read("lm_head.weight", (c.vocab_size, c.d_model), dt, transpose=True)
    return Params(embed=embed, layers=layers, final_norm=final_norm, head=head), stored_dtype


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def chat_template(folder: Path, tok_cfg: dict[str, Any]) -> str | None:
    """chat_template.jinja if present (newer exports), else tokenizer_config.json's (a string or named list)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


def tokenizer_vocab(folder: Path) -> tuple[Path, dict[str, int], dict[str, int]]:
    """tokenizer.json's path, its special added tokens and its full text -> id map (for bos/eos lookups)."""
    path = folder / "tokenizer.json"
    doc = read_json(path)
    specials: dict[str, int] = {}
    for t in doc.get("added_tokens") or []:
        if isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int) and t.get("special", False):
            specials[t["content"]] = t["id"]
    model = doc.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    return path, specials, vocab if isinstance(vocab, dict) else {}


def load_hf(resolved: ResolvedModel, dtype: str) -> Model:
    folder = Path(resolved.path)
    cfg = read_json(folder / "config.json")
    config = config_from_hf(folder / "config.json", cfg, dtype)
    tok_cfg = read_json(folder / "tokenizer_config.json", required=False)
    gen_cfg = read_json(folder / "generation_config.json", required=False)
    tok_path, specials, vocab = tokenizer_vocab(folder)

    def lookup(text: str | None) -> int | None:
        if text is None:
            return None
        return specials.get(text, vocab.get(text) if isinstance(vocab.get(text), int) else None)

    bos_token, eos_token = _token_content(tok_cfg.get("bos_token")), _token_content(tok_cfg.get("eos_token"))
    bos_id = lookup(bos_token) if bos_token else _first_id(cfg.get("bos_token_id"))
    eos_id = lookup(eos_token) if eos_token else _first_id(cfg.get("eos_token_id"))
    id_to_text = {i: t for t, i in {**vocab, **specials}.items() if isinstance(i, int)}
    if bos_token is None and bos_id is not None:
        bos_token = id_to_text.get(bos_id)
    if eos_token is None and eos_id is not None:
        eos_token = id_to_text.get(eos_id)

    params, stored_dtype = params_from_hf(folder, config)
    eos_ids = [eos_id, *_ids(gen_cfg.get("eos_token_id")), *_ids(cfg.get("eos_token_id"))]
    return Model(
        name=resolved.name,
        source=resolved.source,
        format="hf",
        path=resolved.path,
        config=config,
        params=params,
        tokenizer_spec=TokenizerFile(str(tok_path), bos_token, eos_token, add_bos if isinstance(add_bos := tok_cfg.get("add_bos_token"), bool) else None),
        chat_template=chat_template(folder, tok_cfg),
        bos_token=bos_token,
        eos_token=eos_token,
        stop_token_ids=stop_token_ids(eos_ids, specials),
        quantization=stored_dtype,
        file_size=resolved.file_size,
        metadata=cfg,
        origin=resolved.origin,
    )


def describe_hf(folder: Path) -> tuple[ModelConfig, int, str, int]:
    """(config, parameter count, stored dtype, bytes on disk) from headers only, for listings."""
    config = config_from_hf(folder / "config.json", read_json(folder / "config.json"))
    files = shard_files(folder)
    with _Shards(folder, files) as shards:
        n_params, dtype = shards.commonest_dtype()
    return config, n_params, dtype, sum(f.stat().st_size for f in files)
