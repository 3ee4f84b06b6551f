"""params.json of a Meta Llama 3 checkpoint -> ModelConfig, and the names Meta gives the tokenizer's special tokens.

params.json holds what Meta's `ModelArgs` reads: dim, n_layers, n_heads, n_kv_heads,
vocab_size, multiple_of, ffn_dim_multiplier, norm_eps, rope_theta, use_scaled_rope. The rest
is implied by the Llama 3 architecture, as Meta's reference code implies it: the feed-forward
width comes from dim by Meta's rounding rule, and a checkpoint with use_scaled_rope has Llama
3.1's long-context RoPE scaling (original context 8192, frequency factors 1 and 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lljx.config import Llama3RopeScaling, ModelConfig
from lljx.models.errors import ModelFileError

LLAMA3_CONTEXT = 8192
LLAMA31_CONTEXT = 131072  # every Llama 3 model with use_scaled_rope (3.1, 3.2, 3.3) was trained to 128K
# params.json does not say the scaling factor. Meta's published configs give 32 to Llama 3.2's
# 1B and 3B (and Llama Guard 3 1B), the only Llama 3 models narrower than 4096, and 8 to the rest.
SMALL_MODEL_DIM = 4096
SMALL_MODEL_FACTOR, LARGE_MODEL_FACTOR = 32.0, 8.0
# Keys of checkpoints this loader cannot run: quantized or LoRA weights, vision and mixture-of-experts models.
UNSUPPORTED_KEYS = {
    "quantization_args": "quantized checkpoints",
    "lora_args": "LoRA checkpoints",
    "vision_chunk_size": "vision models",
    "vision_model": "vision models",
    "moe_args": "mixture-of-experts models",
}


def llama3_special_tokens() -> list[str]:
    """The names Meta's Llama 3.1+ tokenizer gives the 256 special tokens numbered after tokenizer.model's ranks.

    Llama 3.0 named fewer of them (`<|eom_id|>` was still reserved); the ids of the tokens a
    chat uses are the same in both.
    """
    named = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
    ]  # fmt: skip
    return named + [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(named))]


def feed_forward_width(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """Meta's SwiGLU width: two thirds of 4 * dim, times the multiplier, rounded up to a multiple of multiple_of."""
    width = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        width = int(multiplier * width)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


def config_from_params(path: Path, params: dict[str, Any], *, tied: bool, dtype: str = "f32") -> ModelConfig:
    """ModelConfig from a params.json dict; `tied` (no separate output weight) comes from the tensors."""

    def fail(message: str) -> ModelFileError:
        return ModelFileError(path, message)

    for key, what in UNSUPPORTED_KEYS.items():
        if params.get(key):
            raise fail(f"{what} ({key}) are not supported")

    def number(key: str, kind: type = int, default: Any = ...) -> Any:
        value = params.get(key, default)
        if value is ...:
            raise fail(f"missing {key!r}")
        if value is None and default is None:
            return None
        wrong_kind = kind is int and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or wrong_kind:
            raise fail(f"{key!r} should be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not 0 < value < (1 << 24 if kind is int else float("inf")):
            raise fail(f"{key!r} = {value!r} is out of range")
        return kind(value)

    dim, n_heads = number("dim"), number("n_heads")
    if dim % n_heads:
        raise fail(f"dim {dim} is not a multiple of n_heads {n_heads}")
    vocab = params.get("vocab_size")
    if vocab == -1:
        raise fail("vocab_size -1 is a Llama 2 checkpoint (SentencePiece tokenizer), which is not supported")
    scaled = params.get("use_scaled_rope", False)
    if not isinstance(scaled, bool):
        raise fail(f"'use_scaled_rope' should be true or false, got {scaled!r}")
    scaling = None
    if scaled:
        default_factor = SMALL_MODEL_FACTOR if dim < SMALL_MODEL_DIM else LARGE_MODEL_FACTOR
        scaling = Llama3RopeScaling(
            factor=number("rope_scaling_factor", float, default_factor),
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_context_length=LLAMA3_CONTEXT,
        )
    fields = dict(
        vocab_size=number("vocab_size"),
        d_model=dim,
        n_layers=number("n_layers"),
        n_heads=n_heads,
        n_kv_heads=number("n_kv_heads", int, n_heads),
        d_head=dim // n_heads,
        d_ffn=feed_forward_width(dim, number("multiple_of", int, 256), number("ffn_dim_multiplier", float, None)),
        rope_theta=number("rope_theta", float, 500000.0),
        norm_eps=number("norm_eps", float, 1e-5),
        context_length=LLAMA31_CONTEXT if scaled else LLAMA3_CONTEXT,
        tie_embeddings=tied,
        rope_scaling=scaling,
        dtype=dtype,
    )
    try:
        return ModelConfig(**fields)
    except ValueError as e:  # ModelConfig's own consistency checks
        raise fail(str(e)) from None
