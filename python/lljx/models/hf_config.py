"""config.json of a Hugging Face Llama folder -> ModelConfig, and the strict JSON reading every HF file goes through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lljx.config import Llama3RopeScaling, ModelConfig
from lljx.models.errors import ModelFileError

ARCHITECTURES = ("LlamaForCausalLM",)


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

    archs = (
        [a for a in cfg.get("architectures") or [] if isinstance(a, str)]
        if isinstance(cfg.get("architectures"), list)
        else []
    )
    if not (set(archs) & set(ARCHITECTURES)) and cfg.get("model_type") != "llama":
        raise fail(
            f"architecture {archs or cfg.get('model_type')!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
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
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not isinstance(value, int))
        ):
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
