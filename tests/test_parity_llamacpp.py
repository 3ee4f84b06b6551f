"""The embedded model against llama.cpp on the same weights at f32: chat prompt, logits, greedy text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import llamacpp_oracle as oracle
from lljx.core import kv_cache, transformer
from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies.jit_token import strategy

pytestmark = pytest.mark.slow

PROMPTS = [
    "Why is the sky blue?",
    "What is the derivative of x squared?",
    "Explain photosynthesis in one sentence.",
    "Name three prime numbers and say why they are prime.",
    "How far away is the Moon, roughly?",
]
GREEDY_TOKENS = 32


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="f32")


@pytest.fixture(scope="module")
def llama(model):
    return oracle.load(oracle.requantize_f32(Path(model.path)), n_ctx=256, logits_all=True)


@pytest.fixture(scope="module")
def greedy_decoder(model):
    return strategy.build(model, SamplerSettings(temperature=0))


def test_chat_prompt_matches_llamacpp_formatter(model, llama):
    """Our Rust-rendered template + tokenizer give the ids llama-cpp-python's Jinja2 formatter + llama.cpp give."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=model.chat_template, eos_token=model.eos_token or "", bos_token=model.bos_token or ""
    )
    for prompt in PROMPTS:
        rendered = formatter(messages=[{"role": "user", "content": prompt}]).prompt
        theirs = llama.tokenize(rendered.encode(), add_bos=False, special=True)
        assert chat_prompt_ids(model, prompt) == theirs


def test_last_position_logits_agree(model, llama):
    """Max |difference| of last-position logits stays under 1e-3 of their range (f32 rounding order differs)."""
    for prompt in PROMPTS:
        ids = chat_prompt_ids(model, prompt)
        theirs = oracle.all_logits(llama, ids)[-1]
        ours, _ = transformer.forward(
            model.config, model.params, jnp.asarray([ids]), jnp.arange(len(ids))[None],
            kv_cache.create(model.config, 1, 128), jnp.array([len(ids) - 1]),
        )
        ours = np.asarray(ours[0])
        spread = float(theirs.max() - theirs.min())
        assert np.max(np.abs(ours - theirs)) < 1e-3 * spread
        assert int(np.argmax(ours)) == int(np.argmax(theirs))


def test_greedy_tokens_equal_llamacpp(model, llama, greedy_decoder):
    for prompt in PROMPTS:
        ids = chat_prompt_ids(model, prompt)
        generation = Generation(model, greedy_decoder, ids, max_tokens=GREEDY_TOKENS, stop_token_ids=model.stop_token_ids)
        text = "".join(generation)
        theirs = oracle.greedy_tokens(llama, ids, GREEDY_TOKENS)
        assert generation.token_ids == theirs, prompt
        assert text == llama.detokenize(theirs).decode("utf-8", errors="replace")
        assert len(theirs) >= GREEDY_TOKENS or generation.stats.stop_reason == "stop"


def test_cli_greedy_text_equals_llamacpp(model, llama):
    prompt = PROMPTS[0]
    run = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "generate", prompt, "--dtype", "f32", "--temperature", "0",
         "--max-tokens", str(GREEDY_TOKENS)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    theirs = oracle.greedy_tokens(llama, chat_prompt_ids(model, prompt), GREEDY_TOKENS)
    assert run.stdout == llama.detokenize(theirs).decode() + "\n"
