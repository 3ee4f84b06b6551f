"""The Rust token loop under a grammar: masks reach the sampler, forced tokens skip it, the reply ends
when the grammar is complete, the budget ends it with "length", and every step's mask is timed.

The grammar and the tokenizer are real; the transformer is a script that records what it is
asked, so each case sees exactly the calls the loop makes.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from lljx.generation import Generation
from lljx.models import load_model
from lljx.strategies.api import DecodeState, LogitsState
from lljx.structured import compile_schema


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="f32")


class Logits(NamedTuple):
    step: int  # which scripted token these "logits" stand for


class ScriptedSplitDecoder:
    """Answers the split step from a script: `sample` takes the scripted token, and fails the test
    if the mask does not allow it; `force` records tokens taken without sampling."""

    compile_seconds = 0.0

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.forced: list[int] = []
        self.masks: list[np.ndarray] = []

    def prepare(self, plan, batch=1, *, masked=False) -> None:
        assert masked, "a constrained generation prepares the split step"

    def prefill(self, prompt_ids, plan, settings=None):
        raise AssertionError("a constrained generation never calls prefill")

    def decode(self, previous):
        raise AssertionError("a constrained generation never calls decode")

    def prefill_logits(self, prompt_ids, plan, settings=None) -> LogitsState:
        self.calls.append("prefill_logits")
        return LogitsState(Logits(0), None, np.array([len(prompt_ids)]), None, None)

    def forward(self, previous: DecodeState) -> LogitsState:
        self.calls.append("forward")
        return LogitsState(Logits(int(previous.position[0]) + 1), None, previous.position + 1, None, None)

    def _token(self, state: LogitsState) -> int:
        return self.script[state.logits.step]

    def sample(self, state: LogitsState, mask: np.ndarray) -> DecodeState:
        self.calls.append("sample")
        self.masks.append(mask)
        token = self._token(state)
        assert mask.dtype == np.uint32 and mask.shape[0] == 1
        assert mask[0, token // 32] >> np.uint32(token % 32) & 1, f"the mask does not allow scripted token {token}"
        # A device array, as a real sampler returns: the loop reads it back.
        return DecodeState(jnp.asarray([[token]], jnp.int32), None, np.array([state.logits.step]), None, None)

    def force(self, state: LogitsState, tokens: np.ndarray) -> DecodeState:
        self.calls.append("force")
        assert tokens.dtype == np.int32 and tokens.shape == (1, 1)
        assert int(tokens[0, 0]) == self._token(state), "the forced token must be the one the script has next"
        self.forced.append(int(tokens[0, 0]))
        return DecodeState(tokens, None, np.array([state.logits.step]), None, None)


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "kind": {"const": "person"}},
          "required": ["name", "kind"], "additionalProperties": False}


def run(model, text, *, schema=PERSON, max_tokens=64, extra=()):
    script = model.tokenizer.encode(text) + list(extra)
    decoder = ScriptedSplitDecoder(script)
    generation = Generation(model, decoder, [1, 2, 3], max_tokens=max_tokens, stop_token_ids=model.stop_token_ids,
                            grammar=compile_schema(model, schema))
    return "".join(generation), generation, decoder


def test_the_reply_ends_when_the_grammar_is_complete(model):
    reply = '{"name": "Ada", "kind": "person"}'
    # Whatever the script has after the object is never asked for.
    text, generation, decoder = run(model, reply, extra=model.tokenizer.encode(" and more"))
    assert text == reply and json.loads(text) == {"name": "Ada", "kind": "person"}
    assert generation.stats.stop_reason == "stop"
    assert generation.token_ids == model.tokenizer.encode(reply)
    assert decoder.calls[0] == "prefill_logits" and "prefill" not in decoder.calls


def test_forced_tokens_skip_sampling_and_every_step_is_masked_and_timed(model):
    reply = '{"name": "Ada", "kind": "person"}'
    _, generation, decoder = run(model, reply)
    n = len(generation.token_ids)
    # Property names come in the schema's order and the const is fixed, so "name", "kind" and
    # "person" are the only tokens their grammar state allows: taken without sampling.
    assert decoder.forced == [model.tokenizer.encode(word)[0] for word in ("name", "kind", "person")]
    assert decoder.calls.count("sample") + decoder.calls.count("force") == n
    assert len(generation.stats.mask_ns) == n and all(ns > 0 for ns in generation.stats.mask_ns)
    assert generation.stats.mask_p99_ns >= generation.stats.mask_p50_ns > 0
    # Each step's forward pass is dispatched before that step's mask and sample.
    steps = decoder.calls[1:]
    assert steps[0] in ("sample", "force") and steps[1] == "forward"


def test_a_reply_out_of_budget_ends_with_length(model):
    text, generation, _ = run(model, '{"name": "Ada Lovelace", "kind": "person"}', max_tokens=4)
    assert generation.stats.stop_reason == "length" and len(generation.token_ids) == 4
    assert '{"name": "Ada Lovelace"'.startswith(text)


def test_a_reply_completed_by_the_budgets_last_token_ended_by_itself(model):
    reply = '{"name": "Ada", "kind": "person"}'
    n = len(model.tokenizer.encode(reply))
    text, generation, _ = run(model, reply, max_tokens=n)
    assert text == reply and generation.stats.stop_reason == "stop"
    _, short, _ = run(model, reply, max_tokens=n - 1)
    assert short.stats.stop_reason == "length"


def test_a_stop_token_ends_a_reply_where_the_grammar_may_end(model):
    eos = model.stop_token_ids[0]
    text, generation, _ = run(model, "1234", schema={"type": "integer"}, extra=[eos])
    assert text == "1234" and generation.stats.stop_reason == "stop"


def test_a_token_the_mask_forbids_never_reaches_the_script(model):
    with pytest.raises(AssertionError, match="does not allow"):
        run(model, '{"name": 5}')  # a number where the schema wants a string
