"""Constrained generation on the embedded model through every installed strategy, plugins included:
the split step gives the whole step's tokens when nothing is masked, and a schema gives the same
valid reply whichever strategy runs it."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry
from lljx.strategies.api import plan_for
from lljx.strategies.split import all_allowed
from lljx.structured import compile_schema

pytestmark = pytest.mark.slow

STRATEGIES = sorted(info.name for info in registry.available() if info.error is None)
TOKENS = 10
PROMPT = "Name a city and its country."
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="f32")


@pytest.fixture(scope="module")
def ids(model):
    return chat_prompt_ids(model, PROMPT)


def whole_step_tokens(model, decoder, ids):
    generation = Generation(model, decoder, ids, max_tokens=TOKENS)  # no stop tokens: always TOKENS long
    list(generation)
    return generation.token_ids


def split_step_tokens(model, decoder, ids):
    """prefill_logits, then sample and forward in turn, with every token allowed."""
    plan = plan_for(len(ids), TOKENS, model.config.context_length)
    decoder.prepare(plan, masked=True)
    mask = all_allowed(1, model.config.vocab_size)
    state = decoder.sample(decoder.prefill_logits(np.asarray([ids], np.int32), plan), mask)
    tokens = [int(np.asarray(state.tokens)[0, -1])]
    while len(tokens) < TOKENS:
        state = decoder.sample(decoder.forward(state), mask)
        tokens.append(int(np.asarray(state.tokens)[0, -1]))
    return tokens


@pytest.fixture(scope="module")
def reference(model, ids):
    """jit-token's constrained greedy reply, the one every other strategy must give."""
    decoder = registry.load("jit-token").build(model, SamplerSettings(temperature=0))
    return constrained(model, decoder, ids)


def constrained(model, decoder, ids, settings=SamplerSettings(temperature=0)):
    generation = Generation(model, decoder, ids, max_tokens=40, stop_token_ids=model.stop_token_ids,
                            settings=settings, grammar=compile_schema(model, CITY))
    return "".join(generation), generation.token_ids, generation.stats


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_splits_its_step_and_gives_the_same_valid_constrained_reply(model, ids, reference, name):
    decoder = registry.load(name).build(model, SamplerSettings(temperature=0))
    # With every token allowed, the split step is the whole step.
    assert split_step_tokens(model, decoder, ids) == whole_step_tokens(model, decoder, ids)
    text, tokens, stats = constrained(model, decoder, ids)
    assert stats.stop_reason == "stop", text
    jsonschema.validate(json.loads(text), CITY)
    assert (text, tokens) == reference[:2]
    assert len(stats.mask_ns) == len(tokens) and stats.grammar_ns > 0


@pytest.mark.parametrize("name", ["jit-token", "fused-loop", "jit-split"])
def test_a_seeded_sampled_reply_is_valid_and_repeats(model, ids, name):
    settings = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, seed=11)
    decoder = registry.load(name).build(model, settings)
    first = constrained(model, decoder, ids, settings)
    assert first[2].stop_reason == "stop", first[0]
    jsonschema.validate(json.loads(first[0]), CITY)
    assert constrained(model, decoder, ids, settings)[:2] == first[:2]


def test_unconstrained_generation_compiles_no_split_step(model, ids):
    decoder = registry.load("jit-token").build(model, SamplerSettings(temperature=0))
    whole_step_tokens(model, decoder, ids)
    assert not decoder._split_prefills and not decoder._forwards and not decoder._samples
