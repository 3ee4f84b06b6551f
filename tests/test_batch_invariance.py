"""Batch invariance: a request's greedy tokens do not depend on what shares its batch.

The native strategies promise it: every product, the decode attention, the embedding lookup,
RMSNorm and argmax run in lljx's kernels, whose rows never depend on each other, and the
rest of the decode path is elementwise per row. Each request here runs alone, then beside
1, 3 and 7 others (different lengths, some sampled, some finishing early, so the batch grows,
shrinks and is compacted around it); its tokens must not move, and must be the tokens the
same strategy's lone decoder (`lljx generate`) gives.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lljx.batching import BatchEngine
from lljx.generation import Generation, chat_prompt_ids
from lljx.models import Model, load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

pytestmark = pytest.mark.slow

GREEDY = SamplerSettings(temperature=0.0)
TARGET = "The history of the Roman Empire begins with"
OTHERS = [
    ("Why is the sky blue?", GREEDY, 40),
    ("List three fruits and their colors. Then list three vegetables.", SamplerSettings(temperature=1.0, seed=5), 6),
    ("What is 2+2?", GREEDY, 3),
    ("Write a long poem about the sea and the wind and the stars above.", SamplerSettings(temperature=0.7, top_k=20, seed=9), 40),
    ("Name two planets.", GREEDY, 12),
    ("How do birds fly? Explain in detail, with examples.", GREEDY, 40),
    ("Once upon a time", SamplerSettings(temperature=1.2, top_p=0.9, seed=2), 25),
]


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("smollm2", dtype="auto")


@pytest.fixture(scope="module", params=["native-token", "native-loop"])
def strategy_engine(request: pytest.FixtureRequest, model: Model) -> Iterator[tuple[str, BatchEngine]]:
    strategy = registry.load(request.param)
    running = BatchEngine(model, registry.build_slots(strategy, model), slots=8)
    yield request.param, running
    running.close(timeout=60)


def tokens(engine: BatchEngine, ids: list[int], settings: SamplerSettings, budget: int) -> list[int]:
    stream = engine.stream(ids, max_tokens=budget, settings=settings)
    list(stream)
    assert stream.finished is not None
    return stream.finished.token_ids


def test_greedy_tokens_do_not_depend_on_the_batch(strategy_engine, model):
    name, engine = strategy_engine
    ids = chat_prompt_ids(model, TARGET)
    alone = tokens(engine, ids, GREEDY, 32)
    for company in (1, 3, 7):
        results: dict[int, list[int]] = {}

        def run(i: int, prompt: str, settings: SamplerSettings, budget: int) -> None:
            results[i] = tokens(engine, chat_prompt_ids(model, prompt), settings, budget)

        threads = [threading.Thread(target=run, args=(i, *other)) for i, other in enumerate(OTHERS[:company])]
        for thread in threads:
            thread.start()
        mine = tokens(engine, ids, GREEDY, 32)
        for thread in threads:
            thread.join(120)
        assert mine == alone, f"with {company} other requests"
        assert len(results) == company
    decoder = registry.build(registry.load(name), model, GREEDY)
    lone = Generation(model, decoder, ids, max_tokens=32, stop_token_ids=model.stop_token_ids, settings=GREEDY)
    list(lone)
    assert lone.token_ids == alone  # what `lljx generate` gives: a lone request is served as before


def test_a_reply_that_outgrows_its_cache_keeps_its_tokens(strategy_engine, model):
    """A batch's cache follows its rows: a reply from a ~200-token prompt starts in 256 positions
    and is copied into 512 mid-reply (and a companion's with it); its tokens are the lone decoder's."""
    name, engine = strategy_engine
    preamble = " ".join(f"Item {i} is a kind of fruit." for i in range(14))
    ids = chat_prompt_ids(model, preamble + " Now write the numbers from 1 to 100, one per line.")
    budget = 96
    assert 150 < len(ids) < 256 - 64 < len(ids) + budget  # placed in 256 positions, grown to 512
    company: list[list[int]] = []
    other = threading.Thread(target=lambda: company.append(tokens(engine, chat_prompt_ids(model, OTHERS[5][0]), GREEDY, 120)))
    other.start()
    together = tokens(engine, ids, GREEDY, budget)
    other.join(120)
    assert len(together) == budget and company
    alone = tokens(engine, ids, GREEDY, budget)
    decoder = registry.build(registry.load(name), model, GREEDY)
    lone = Generation(model, decoder, ids, max_tokens=budget, stop_token_ids=model.stop_token_ids, settings=GREEDY)
    list(lone)
    assert together == alone == lone.token_ids
