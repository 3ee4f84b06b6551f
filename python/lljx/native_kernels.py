"""lljx's Rust matrix-vector kernel inside jitted JAX code on CPU: registration with XLA and the call."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lljx import _native
from lljx.params import Int8Weight

TARGET = "lljx_matvec"


@functools.cache
def register() -> None:
    """Registers the handler with XLA's CPU backend once per process."""
    jax.ffi.register_ffi_target(TARGET, _native.matvec_ffi_handler(), platform="cpu")


def check_available() -> None:
    """Raises a one-line error when the kernel cannot run: it is a CPU kernel."""
    backend = jax.default_backend()
    if backend != "cpu":
        raise ValueError(f"the native matvec kernel runs on CPU only; the default JAX backend here is {backend}")


def matvec(x: jax.Array, weights: Sequence[jax.Array | Int8Weight], out_dtype: jnp.dtype) -> list[jax.Array]:
    """x [rows, in] · each weight [in, out_i] in one call; outputs [rows, out_i] at out_dtype."""
    register()
    rows = x.shape[0]
    operands: list[jax.Array] = [x]
    results = []
    for w in weights:
        if isinstance(w, Int8Weight):
            operands += [w.values, w.scales]
            n_out = w.values.shape[1]
        else:
            operands.append(w)
            n_out = w.shape[1]
        results.append(jax.ShapeDtypeStruct((rows, n_out), out_dtype))
    return list(jax.ffi.ffi_call(TARGET, results)(*operands))
