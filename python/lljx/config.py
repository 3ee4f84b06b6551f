"""ModelConfig: every architecture number of a Llama-family model, frozen so jit can treat it as static."""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax.numpy as jnp

# Compute dtype name -> the dtype of activations, KV cache and float weights. int8 is weight-only:
# the layer projections and the head are int8 blocks (llama.cpp's Q8_0), everything else f32.
# auto keeps every weight in its file's own format (GGUF blocks read in place by lljx's CPU
# kernels; an HF folder's torch_dtype) and computes in f32.
DTYPES = {"auto": jnp.float32, "f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "int8": jnp.float32}


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1+ frequency-dependent RoPE scaling (the "llama3" rope_type)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context_length: int


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model plus the compute dtype; hashable, so it can be a static jit argument."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ffn: int
    rope_theta: float
    norm_eps: float
    context_length: int
    tie_embeddings: bool
    # Either explicit per-frequency divisors (GGUF `rope_freqs.weight`) or the Llama 3 formula.
    rope_scaling: Llama3RopeScaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None
    dtype: str = "f32"
    # Activations and KV cache in another float dtype than the weights (e.g. f32 over bf16
    # weights, as the native kernel reads them); None keeps the compute dtype.
    activations: str | None = None
    # Batched decoding with lljx's kernels: RMSNorm runs in lljx's kernel, one row at a time in a
    # fixed order (XLA vectorises a reduction over 8 rows differently than over 1), so a request's
    # numbers are the same in any batch.
    row_invariant: bool = False
    # The KV cache in another float dtype than the activations (f16 under lljx's kernels, as
    # llama.cpp keeps it: half the bytes that decode attention reads); None keeps theirs.
    kv_cache: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.activations not in (None, "f32", "bf16", "f16"):
            raise ValueError(f"unknown activation dtype {self.activations!r}; expected f32, bf16 or f16")
        if self.kv_cache not in (None, "f32", "bf16", "f16"):
            raise ValueError(f"unknown KV cache dtype {self.kv_cache!r}; expected f32, bf16 or f16")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) is not a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.d_head % 2:
            raise ValueError(f"d_head ({self.d_head}) must be even for RoPE")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.d_head // 2:
            raise ValueError(f"rope_freq_factors has {len(self.rope_freq_factors)} entries, expected {self.d_head // 2}")

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(DTYPES[self.dtype])

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The dtype of activations (and of the KV cache unless `kv_cache` says otherwise)."""
        return jnp.dtype(DTYPES[self.activations or self.dtype])

    @property
    def cache_dtype(self) -> jnp.dtype:
        """The dtype of the KV cache."""
        return jnp.dtype(DTYPES[self.kv_cache]) if self.kv_cache else self.activation_dtype

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def with_dtype(self, dtype: str) -> ModelConfig:
        return replace(self, dtype=dtype)

    @property
    def n_params(self) -> int:
        """Parameter count, counting a tied head once."""
        d, f, v = self.d_model, self.d_ffn, self.vocab_size
        attn = d * self.n_heads * self.d_head * 2 + d * self.n_kv_heads * self.d_head * 2
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else v * d
        return v * d + self.n_layers * layer + d + head
