"""Head padding and sharding rules for a mesh: the padded model computes the original's logits, specs split what they should."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import TINY, random_params
from lljx import parallel
from lljx.config import ModelConfig
from lljx.core import kv_cache, transformer
from lljx.models.quantize import from_rows
from lljx.params import Int8Weight
from lljx.parallel.heads import NO_HEAD, pad_params, padded_config, plan_heads
from lljx.parallel.shard import param_specs

SMOLLM2 = dataclasses.replace(TINY, n_heads=9, n_kv_heads=3, d_head=64, d_model=576, d_ffn=1536, vocab_size=49152)
LLAMA_1B = dataclasses.replace(TINY, n_heads=32, n_kv_heads=8, d_head=64, d_model=2048, d_ffn=8192, vocab_size=128256)


def test_embedded_shape_repeats_kv_heads_and_pads_query_heads():
    two, four = plan_heads(SMOLLM2, 2), plan_heads(SMOLLM2, 4)
    assert (two.padded_heads, two.padded_kv_heads, two.kv_copies, two.q_per_kv) == (12, 6, 2, 2)
    assert (four.padded_heads, four.padded_kv_heads, four.kv_copies, four.q_per_kv) == (12, 12, 4, 1)
    # Copy c of KV head g takes query heads c*q_per_kv.. of its group; the group of 3 leaves one copy a zero head.
    assert two.q_sources().tolist() == [0, 1, 2, NO_HEAD, 3, 4, 5, NO_HEAD, 6, 7, 8, NO_HEAD]
    assert two.kv_sources().tolist() == [0, 0, 1, 1, 2, 2]
    assert four.q_sources().tolist() == [0, 1, 2, NO_HEAD, 3, 4, 5, NO_HEAD, 6, 7, 8, NO_HEAD]
    assert "9 query / 3 KV heads run as 12 / 6" in two.describe()


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_heads_a_mesh_divides_stay_as_they_are(devices):
    plan = plan_heads(LLAMA_1B, devices)
    assert not plan.changes_anything and plan.describe() == ""
    assert padded_config(LLAMA_1B, plan) == LLAMA_1B


def test_every_device_gets_whole_kv_heads_with_their_query_heads():
    for config in (SMOLLM2, LLAMA_1B, TINY):
        for devices in (2, 3, 4, 6, 8):
            plan = plan_heads(config, devices)
            assert plan.padded_kv_heads % devices == 0 and plan.padded_heads % devices == 0
            assert plan.d_ffn_padded % devices == 0
            # Every original query head appears exactly once, next to a copy of its own KV head.
            q, kv = plan.q_sources(), plan.kv_sources()
            assert sorted(q[q != NO_HEAD].tolist()) == list(range(config.n_heads))
            for head, source in enumerate(q):
                if source != NO_HEAD:
                    assert kv[head // plan.q_per_kv] == source // (config.n_heads // config.n_kv_heads)


def logits(config: ModelConfig, params) -> np.ndarray:
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    return np.asarray(transformer.all_logits(config, params, ids, kv_cache.create(config, 1, 16)))


@pytest.mark.parametrize("devices", [3, 4, 5])
def test_padded_model_computes_the_same_logits(devices):
    plan = plan_heads(TINY, devices)
    assert plan.changes_anything  # 4 query / 2 KV heads, FFN 48: each of these meshes pads something
    params = random_params(TINY)
    padded = pad_params(params, TINY, plan)
    np.testing.assert_allclose(logits(padded_config(TINY, plan), padded), logits(TINY, params), rtol=1e-5, atol=1e-5)


def test_int8_weights_pad_by_whole_blocks():
    config = dataclasses.replace(TINY, n_heads=3, n_kv_heads=1, d_head=32, d_model=64, d_ffn=96, dtype="int8")
    params = random_params(dataclasses.replace(config, dtype="f32"))

    def int8(w):
        return from_rows(np.asarray(w).T)

    names = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    params = params._replace(layers=tuple(lp._replace(**{n: int8(getattr(lp, n)) for n in names}) for lp in params.layers))
    plan = plan_heads(config, 2)
    padded = pad_params(params, config, plan)
    assert isinstance(padded.layers[0].wo, Int8Weight) and padded.layers[0].wo.values.shape[0] == plan.padded_heads * 32
    np.testing.assert_allclose(logits(padded_config(config, plan), padded), logits(config, params), rtol=1e-5, atol=1e-5)


def test_specs_split_heads_ffn_and_vocabulary():
    params = random_params(dataclasses.replace(TINY, tie_embeddings=False, vocab_size=96))
    specs = param_specs(params, 2)
    layer = specs.layers[0]
    assert layer.wq == layer.wk == layer.wv == layer.w_gate == layer.w_up == P(None, "tp")
    assert layer.wo == layer.w_down == P("tp", None)
    assert layer.attn_norm == layer.ffn_norm == specs.final_norm == P()
    assert specs.head == P(None, "tp") and specs.embed == P("tp", None)


def test_a_vocabulary_the_mesh_does_not_divide_is_replicated():
    specs = param_specs(random_params(TINY), 2)  # vocabulary 97
    assert specs.head == P() and specs.embed is None  # tied: the head is the table


def test_more_devices_than_there_are_is_one_line():
    with pytest.raises(parallel.MeshError) as error:
        parallel.configure(jax.device_count() + 1)
    message = str(error.value)
    assert "\n" not in message and f"needs {jax.device_count() + 1} devices" in message
    assert "--xla_force_host_platform_device_count" in message
    assert parallel.active() is None


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_a_size_that_is_not_a_device_count_is_one_line(size):
    with pytest.raises(parallel.MeshError, match="at least 1"):
        parallel.configure(size)


def test_one_device_is_no_mesh():
    assert parallel.configure(1) is None and parallel.active() is None


def test_native_strategies_refuse_a_mesh():
    from lljx.strategies import registry

    for name in ("native-token", "native-loop"):
        with pytest.raises(parallel.MeshError, match="run on one device"):
            parallel.check_strategy(registry.load(name))
    parallel.check_strategy(registry.load("jit-token"))
