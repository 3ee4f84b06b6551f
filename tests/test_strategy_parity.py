"""Every installed strategy, plugins included, gives llama.cpp's greedy tokens on the embedded model at f32."""

from __future__ import annotations

from pathlib import Path

import pytest

import llamacpp_oracle as oracle
from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

pytestmark = pytest.mark.slow

PROMPTS = ["Why is the sky blue?", "What is the speed of light?"]
TOKENS = 32
STRATEGIES = sorted(info.name for info in registry.available() if info.error is None)


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="f32")


@pytest.fixture(scope="module")
def expected(model):
    llama = oracle.load(oracle.requantize_f32(Path(model.path)), n_ctx=256)
    return {p: oracle.greedy_tokens(llama, chat_prompt_ids(model, p), TOKENS) for p in PROMPTS}


def test_built_ins_and_plugins_are_all_checked():
    assert {"no-jit", "jit-token", "jit-split", "jit-layer", "scan", "fused-loop", "native-token", "native-loop"} <= set(STRATEGIES)


@pytest.mark.parametrize("name", STRATEGIES)
def test_greedy_tokens_equal_llamacpp(model, expected, name):
    decoder = registry.load(name).build(model, SamplerSettings(temperature=0))
    for prompt in PROMPTS:
        generation = Generation(model, decoder, chat_prompt_ids(model, prompt), max_tokens=TOKENS,
                                stop_token_ids=model.stop_token_ids)
        text = "".join(generation)
        assert generation.token_ids == expected[prompt], (name, prompt)
        assert text == model.tokenizer.decode(expected[prompt])
