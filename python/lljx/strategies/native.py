"""Strategies whose decode projections run lljx's Rust matvec kernel (CPU): per token, and K tokens per dispatch.

Activations and the KV cache are f32 whatever the weights' dtype (f32, bf16, f16, int8).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lljx import native_kernels
from lljx.config import ModelConfig
from lljx.core.linear import use_native_kernel
from lljx.sampling import SamplerSettings
from lljx.strategies.batched import per_token_slots
from lljx.strategies.compiled import CompiledDecoder, per_token_decoder
from lljx.strategies.fused_loop import FusedLoop
from lljx.strategies.slots import SlotDecoder

if TYPE_CHECKING:
    from lljx.models import Model


def kernel_config(model: Model) -> ModelConfig:
    """f32 activations over 16-bit weights: the kernel accumulates in f32 anyway, and XLA:CPU's f32
    attention and prefill matmuls are far faster than its 16-bit ones. The KV cache is f16, as
    llama.cpp keeps it: a context takes half the memory, and decode attention, which widens each
    vector as it loads it, reads half the bytes. RMSNorm runs in lljx's kernel too
    (`row_invariant`): with every product, the decode attention, the embedding lookup and argmax
    already in kernels whose rows are independent, a request's tokens are then the same alone
    (`build`) and in any batch (`build_slots`)."""
    return replace(model.config, activations="f32", row_invariant=True, kv_cache="f16")


class NativeToken:
    name = "native-token"
    reads_file_formats = True
    description = "jit-token with every decode projection in lljx's Rust matvec kernel (XLA FFI, CPU)"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        native_kernels.check_available()
        return per_token_decoder(
            model, sampler, params=use_native_kernel(model.params), config=kernel_config(model), argmax=native_kernels.argmax
        )

    def build_slots(self, model: Model) -> SlotDecoder:
        native_kernels.check_available()
        return per_token_slots(
            model, params=use_native_kernel(model.params), config=kernel_config(model), argmax=native_kernels.argmax
        )


class NativeLoop:
    name = "native-loop"
    reads_file_formats = True
    description = "fused-loop (8 tokens per dispatch) with every decode projection in lljx's Rust matvec kernel"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        native_kernels.check_available()
        return FusedLoop().build(
            model, sampler, params=use_native_kernel(model.params), config=kernel_config(model), argmax=native_kernels.argmax
        )

    def build_slots(self, model: Model) -> SlotDecoder:
        native_kernels.check_available()
        return FusedLoop().build_slots(
            model, params=use_native_kernel(model.params), config=kernel_config(model), argmax=native_kernels.argmax
        )


native_token = NativeToken()
native_loop = NativeLoop()
