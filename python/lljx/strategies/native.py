"""Strategies whose decode projections run lljx's Rust matvec kernel (CPU): per token, and K tokens per dispatch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lljx import native_kernels
from lljx.core.linear import use_native_kernel
from lljx.sampling import SamplerSettings
from lljx.strategies.compiled import CompiledDecoder, per_token_decoder
from lljx.strategies.fused_loop import FusedLoop

if TYPE_CHECKING:
    from lljx.models import Model


class NativeToken:
    name = "native-token"
    description = "jit-token with every decode projection in lljx's Rust matvec kernel (XLA FFI, CPU)"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        native_kernels.check_available()
        return per_token_decoder(model, sampler, params=use_native_kernel(model.params))


class NativeLoop:
    name = "native-loop"
    description = "fused-loop (8 tokens per dispatch) with every decode projection in lljx's Rust matvec kernel"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        native_kernels.check_available()
        return FusedLoop().build(model, sampler, params=use_native_kernel(model.params))


native_token = NativeToken()
native_loop = NativeLoop()
