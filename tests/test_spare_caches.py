"""A batch that grows again to a shape it held writes into the cache it left there, not into fresh memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lljx.models import load_model
from lljx.strategies import registry, slot_steps
from lljx.strategies.spare_caches import SpareCaches


def random_like(tree, seed: int):
    leaves, shape = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(shape, [jax.random.normal(k, x.shape).astype(x.dtype) for k, x in zip(keys, leaves)])


def test_a_regrown_batch_is_written_into_the_cache_it_left_and_holds_the_same_rows() -> None:
    model = load_model("smollm2", dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    empty = decoder.empty(4, 256)
    four = empty._replace(cache=random_like(empty.cache, 0))
    grown = decoder.step(four, ([0, 1, 2, 3, 0, 0, 0, 0], 256), None, [])
    eight = grown._replace(cache=random_like(grown.cache, 1))  # what a spare holds: old rows
    left = jax.tree.leaves(eight.cache)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in left]
    back = decoder.step(eight, ([0, 1, 2, 3], 256), None, [])  # the 8-row cache becomes a spare
    back = back._replace(cache=random_like(back.cache, 2))
    # With a spare of its shape, the grow a step waits for is the in-place one.
    assert decoder._key("resize", (4, 256, 8, 256)) == ("resize_into", 4, 256, 8, 256)
    assert decoder._key("resize", (4, 256, 2, 256)) == ("resize", 4, 256, 2, 256)
    decoder.prepare("resize", 4, 256, 8, 256)
    assert decoder.ready("resize_into", 4, 256, 8, 256)
    source = [3, 2, 1, 0, 1, 1, 1, 1]
    expected = slot_steps.resize(back.tokens, back.cache, jnp.asarray(source, jnp.int32), 256)
    again = decoder.step(back, (source, 256), None, [])
    assert [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(again.cache)] == pointers
    assert all(leaf.is_deleted() for leaf in left)  # donated
    for got, want in zip(jax.tree.leaves((again.tokens, again.cache)), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_resize_whose_in_place_program_is_not_compiled_yet_takes_a_fresh_cache() -> None:
    model = load_model("smollm2", dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    decoder._compiled = lambda key: False  # as while its compile is still queued
    state = decoder.empty(2, 256)
    grown = decoder.step(state, ([0, 1, 0, 0], 256), None, [])
    shrunk = decoder.step(grown, ([0, 1], 256), None, [])  # (4, 256) is now a spare
    spare = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(grown.cache)]
    again = decoder.step(shrunk, ([1, 0, 0, 0], 256), None, [])
    assert [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(again.cache)] != spare
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(grown.cache))  # still a spare
    expected = slot_steps.resize(shrunk.tokens, shrunk.cache, jnp.asarray([1, 0, 0, 0], jnp.int32), 256)
    for got, want in zip(jax.tree.leaves((again.tokens, again.cache)), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_spares_hold_at_most_the_largest_ones_bytes_dropping_the_smallest_first() -> None:
    spares = SpareCaches()
    big, middle, small = (np.zeros(n, np.uint8) for n in (1000, 600, 300))
    spares.keep((8, 2048), big)
    spares.keep((4, 2048), middle)  # 1,600 bytes > 1,000: the smallest (itself) goes
    assert (8, 2048) in spares and (4, 2048) not in spares
    assert spares.take((8, 2048)) is big and spares.held == 0
    spares.keep((4, 2048), middle)
    spares.keep((2, 2048), small)
    assert spares.held == 900 and spares.largest == 1000
    spares.keep((8, 2048), big)  # 1,900 > 1,000: 300 then 600 go
    assert (8, 2048) in spares and spares.held == 1000
    spares.keep((8, 2048), np.zeros(1000, np.uint8))  # replaces the older spare of its shape
    assert spares.held == 1000
