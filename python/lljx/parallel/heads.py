"""Head counts and FFN widths a mesh can split: KV heads repeated and query heads padded with zero weights.

A mesh of N devices gives each device whole KV heads with all their query heads. When N
does not divide the KV heads, each KV head is repeated r times (r = N / gcd(kv, N)) and its
query heads are shared out among the copies; a copy short of query heads gets zero ones,
whose output projection rows are zero too, so they add exactly nothing. An FFN width N does
not divide gets zero columns (gate and up) and zero rows (down): silu(0) * 0 = 0. The padded
model computes what the original does; only the order of additions in the sharded sums changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from lljx.config import ModelConfig
from lljx.params import Q8_BLOCK, Int8Weight, LayerParams, Params, Weight

NO_HEAD = -1  # a padded query head: zero weights


@dataclass(frozen=True)
class HeadPlan:
    """How a model's heads and FFN are laid out for a mesh of `devices`."""

    devices: int
    n_heads: int
    n_kv_heads: int
    d_ffn: int
    kv_copies: int  # each original KV head appears this many times
    q_per_kv: int  # query heads per (repeated) KV head, padding included
    d_ffn_padded: int

    @property
    def padded_kv_heads(self) -> int:
        return self.n_kv_heads * self.kv_copies

    @property
    def padded_heads(self) -> int:
        return self.padded_kv_heads * self.q_per_kv

    @property
    def changes_heads(self) -> bool:
        return (self.padded_heads, self.padded_kv_heads) != (self.n_heads, self.n_kv_heads)

    @property
    def changes_anything(self) -> bool:
        return self.changes_heads or self.d_ffn_padded != self.d_ffn

    def kv_sources(self) -> np.ndarray:
        """The original KV head behind each padded KV head."""
        return np.repeat(np.arange(self.n_kv_heads), self.kv_copies)

    def q_sources(self) -> np.ndarray:
        """The original query head behind each padded one, NO_HEAD for zero heads.

        Padded KV head j = g * kv_copies + c (copy c of head g) takes the original query heads
        c * q_per_kv ... of group g, as long as the group has them."""
        per_group = self.n_heads // self.n_kv_heads
        sources = []
        for g in range(self.n_kv_heads):
            for c in range(self.kv_copies):
                for s in range(self.q_per_kv):
                    member = c * self.q_per_kv + s
                    sources.append(g * per_group + member if member < per_group else NO_HEAD)
        return np.asarray(sources)

    def describe(self) -> str:
        """What changed, in a phrase ('' when nothing did)."""
        parts = []
        if self.changes_heads:
            parts.append(
                f"{self.n_heads} query / {self.n_kv_heads} KV heads run as {self.padded_heads} / {self.padded_kv_heads} "
                f"(KV heads repeated {self.kv_copies}x, {self.padded_heads - self.n_heads} zero query heads)"
            )
        if self.d_ffn_padded != self.d_ffn:
            parts.append(f"FFN {self.d_ffn} padded to {self.d_ffn_padded}")
        return "; ".join(parts)


def plan_heads(config: ModelConfig, devices: int) -> HeadPlan:
    """The smallest layout of `config`'s heads and FFN that `devices` split evenly."""
    kv, per_group = config.n_kv_heads, config.n_heads // config.n_kv_heads
    copies = devices // math.gcd(kv, devices)
    return HeadPlan(
        devices=devices, n_heads=config.n_heads, n_kv_heads=kv, d_ffn=config.d_ffn, kv_copies=copies,
        q_per_kv=-(-per_group // copies), d_ffn_padded=-(-config.d_ffn // devices) * devices,
    )


def padded_config(config: ModelConfig, plan: HeadPlan) -> ModelConfig:
    return replace(config, n_heads=plan.padded_heads, n_kv_heads=plan.padded_kv_heads, d_ffn=plan.d_ffn_padded)


def pad_layer(lp: LayerParams, plan: HeadPlan, d_head: int) -> LayerParams:
    """One layer's weights laid out for `plan` (the same object when the plan changes nothing)."""
    if not plan.changes_anything:
        return lp
    q_src, kv_src = plan.q_sources(), plan.kv_sources()
    ffn_pad = plan.d_ffn_padded - plan.d_ffn
    return lp._replace(
        wq=pick_columns(lp.wq, q_src, d_head), wk=pick_columns(lp.wk, kv_src, d_head),
        wv=pick_columns(lp.wv, kv_src, d_head), wo=pick_rows(lp.wo, q_src, d_head),
        w_gate=pad_columns(lp.w_gate, ffn_pad), w_up=pad_columns(lp.w_up, ffn_pad), w_down=pad_rows(lp.w_down, ffn_pad),
    )


def pad_params(params: Params, config: ModelConfig, plan: HeadPlan) -> Params:
    """`params` laid out for `plan`."""
    return params._replace(layers=tuple(pad_layer(lp, plan, config.d_head) for lp in params.layers))


def pick_columns(w: Weight, sources: np.ndarray, width: int) -> Weight:
    """Output blocks of `width` columns taken from `sources` (NO_HEAD: zeros)."""
    if np.array_equal(sources, np.arange(len(sources))):
        return w
    if isinstance(w, Int8Weight):
        return Int8Weight(pick_columns(w.values, sources, width), pick_columns(w.scales, sources, width))
    columns = (sources[:, None] * width + np.arange(width)).reshape(-1)
    return _gather(w, columns, axis=1)


def pick_rows(w: Weight, sources: np.ndarray, width: int) -> Weight:
    """Input blocks of `width` rows taken from `sources` (NO_HEAD: zeros)."""
    if np.array_equal(sources, np.arange(len(sources))):
        return w
    if isinstance(w, Int8Weight):
        if width % Q8_BLOCK:
            raise ValueError(f"int8 weights can only be split by heads of a multiple of {Q8_BLOCK}, not {width}")
        blocks = width // Q8_BLOCK
        return Int8Weight(pick_rows(w.values, sources, width), pick_rows(w.scales, sources, blocks))
    rows = (sources[:, None] * width + np.arange(width)).reshape(-1)
    return _gather(w, rows, axis=0)


def pad_columns(w: Weight, extra: int) -> Weight:
    if not extra:
        return w
    n_out = _shape(w)[1]
    return pick_columns(w, np.concatenate([np.arange(n_out), np.full(extra, NO_HEAD)]), 1)


def pad_rows(w: Weight, extra: int) -> Weight:
    if not extra:
        return w
    if isinstance(w, Int8Weight):
        if extra % Q8_BLOCK:
            raise ValueError(f"an int8 FFN can only be padded by whole blocks of {Q8_BLOCK} inputs, not {extra}")
        blocks = np.concatenate([np.arange(w.values.shape[0] // Q8_BLOCK), np.full(extra // Q8_BLOCK, NO_HEAD)])
        return pick_rows(w, blocks, Q8_BLOCK)
    n_in = _shape(w)[0]
    return pick_rows(w, np.concatenate([np.arange(n_in), np.full(extra, NO_HEAD)]), 1)


def _shape(w: Weight) -> tuple[int, ...]:
    return tuple(w.values.shape if isinstance(w, Int8Weight) else w.shape)


def _gather(w: jax.Array, index: np.ndarray, *, axis: int) -> jax.Array:
    """w's slices at `index` along `axis`, zeros where index < 0 (shapes only stay shapes)."""
    shape = list(w.shape)
    shape[axis] = len(index)
    if isinstance(w, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(shape), w.dtype)  # type: ignore[return-value]
    taken = jnp.take(w, jnp.asarray(np.maximum(index, 0)), axis=axis)
    keep = jnp.asarray(index >= 0).reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    return jnp.where(keep, taken, jnp.zeros((), w.dtype))
