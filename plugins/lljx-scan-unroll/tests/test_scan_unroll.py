"""The plugin is discovered by lljx and decodes exactly like lljx's own unrolled strategy."""

from __future__ import annotations

import pytest

from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry
from lljx_scan_unroll import unroll_for


def test_unroll_divides_the_layer_count():
    assert unroll_for(30) == 6 and unroll_for(32) == 4 and unroll_for(28) == 4 and unroll_for(7) == 1


def test_discovered_through_the_entry_point():
    infos = {info.name: info for info in registry.available()}
    assert infos["scan-unroll"].package == "lljx-scan-unroll" and infos["scan-unroll"].error is None


@pytest.mark.slow
def test_same_greedy_tokens_as_jit_token():
    model = load_model(None, dtype="f32")
    ids = chat_prompt_ids(model, "What is the boiling point of water?")
    greedy = SamplerSettings(temperature=0)
    tokens = {}
    for name in ("scan-unroll", "jit-token"):
        generation = Generation(model, registry.load(name).build(model, greedy), ids, max_tokens=16,
                                stop_token_ids=model.stop_token_ids)
        list(generation)
        tokens[name] = generation.token_ids
    assert tokens["scan-unroll"] == tokens["jit-token"] and len(tokens["jit-token"]) > 0
