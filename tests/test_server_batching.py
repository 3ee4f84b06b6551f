"""`lljx serve` with many clients at once: a real server on loopback (4 slots, 4 more may wait) and the official async client.

Every scenario runs under `asyncio.wait_for`, so a hang is a failure, never a stuck suite.
Replies at temperature 0 are compared with the ones each prompt gets alone on the same server.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import httpx
import ollama
import pytest

from serve_process import Server, start_server, stop_server

pytestmark = pytest.mark.slow

T = TypeVar("T")
MODEL = "smollm2"
SLOTS, QUEUE = 4, 4
GREEDY = {"temperature": 0, "num_predict": 16}
PROMPTS = [
    "Why is the sky blue?",
    "List three fruits and their colors.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a prime number is.",
    "Name two planets in the solar system.",
    "How do birds fly?",
    "Give me a synonym for happy.",
]
SAMPLED = {"temperature": 1.2, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 11, "num_predict": 12}
COUNTING = "Count from 1 to 300, separated by commas."


def run(scenario: Awaitable[T], timeout: float = 300) -> T:
    return asyncio.run(asyncio.wait_for(scenario, timeout))


async def reply(client: ollama.AsyncClient, prompt: str, options: dict[str, Any] = GREEDY) -> str:
    return "".join([part.response async for part in await client.generate(model=MODEL, prompt=prompt, options=options, stream=True)])


def ps_row(server: Server) -> dict[str, Any]:
    rows = httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"]
    return rows[0] if rows else {}


async def wait_until_free(server: Server, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await asyncio.to_thread(ps_row, server)
        if row.get("slots_in_use", 0) == 0 and row.get("queued", 0) == 0:
            return row
        await asyncio.sleep(0.05)
    pytest.fail(f"slots still in use after {timeout} s: {row}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("serve-batching"), "--port", "0", "--parallel", str(SLOTS), "--max-queue", str(QUEUE),
        "--dtype", "auto",
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def alone(server: Server) -> list[str]:
    """Each prompt's greedy reply when it is the only request on the server."""
    async def scenario() -> list[str]:
        async with ollama.AsyncClient(host=server.url) as client:
            return [await reply(client, prompt) for prompt in PROMPTS]

    return run(scenario(), 600)


def test_ps_shows_the_slots(server, alone):
    row = ps_row(server)
    assert row["parallel"] == SLOTS and row["slots_in_use"] == 0 and row["queued"] == 0
    assert isinstance(row["compiling"], int) and row["compiling"] >= 0  # common shapes compiling in the background
    assert "4 requests at once" in server.log_text()


def test_eight_concurrent_clients_get_their_lone_replies(server, alone):
    async def scenario() -> tuple[list[str], int]:
        async with ollama.AsyncClient(host=server.url) as client:
            together = asyncio.gather(*(reply(client, prompt) for prompt in PROMPTS))
            busiest = 0
            while not together.done():
                busiest = max(busiest, (await asyncio.to_thread(ps_row, server)).get("slots_in_use", 0))
                await asyncio.sleep(0.02)
            return await together, busiest

    together, busiest = run(scenario())
    assert together == alone
    assert 1 < busiest <= SLOTS  # they shared the batch, and no more than the slots ran at once


def test_sixteen_clients_on_four_slots_past_the_queue_get_503(server, alone):
    async def scenario() -> list[str | int]:
        async with ollama.AsyncClient(host=server.url) as client:

            async def ask(i: int) -> str | int:
                try:
                    return await reply(client, PROMPTS[i % len(PROMPTS)])
                except ollama.ResponseError as error:
                    return error.status_code

            return await asyncio.gather(*(ask(i) for i in range(16)))

    outcomes = run(scenario())
    answered = [(i, text) for i, text in enumerate(outcomes) if isinstance(text, str)]
    assert outcomes.count(503) == 16 - len(answered) and len(answered) >= SLOTS + QUEUE - 1
    assert all(text == alone[i % len(PROMPTS)] for i, text in answered)


def test_mixed_options_in_one_batch(server, alone):
    async def scenario() -> tuple[str, list[str]]:
        async with ollama.AsyncClient(host=server.url) as client:
            seeded_alone = await reply(client, PROMPTS[3], SAMPLED)
            short = {"temperature": 0, "num_predict": 4}
            stop_word = alone[2].split()[2]
            mixed = await asyncio.gather(
                reply(client, PROMPTS[0]),
                reply(client, PROMPTS[3], SAMPLED),
                reply(client, PROMPTS[1], short),
                reply(client, PROMPTS[2], {**GREEDY, "stop": [stop_word]}),
                reply(client, PROMPTS[4], {"temperature": 0.8, "top_k": 5, "seed": 3, "num_predict": 16}),
            )
            return seeded_alone, mixed

    seeded_alone, (greedy, seeded, short, stopped, _) = run(scenario())
    assert greedy == alone[0]
    assert seeded == seeded_alone and seeded != alone[3][: len(seeded)]
    assert alone[1].startswith(short) and len(short) < len(alone[1])
    assert alone[2].startswith(stopped) and alone[2].split()[2] not in stopped


def test_a_prompt_over_num_ctx_is_a_400_and_the_others_are_untouched(server, alone):
    async def scenario() -> tuple[list[str], ollama.ResponseError]:
        async with ollama.AsyncClient(host=server.url) as client:
            others = asyncio.gather(reply(client, PROMPTS[5]), reply(client, PROMPTS[6]))
            await asyncio.sleep(0.3)
            with pytest.raises(ollama.ResponseError) as too_long:
                await reply(client, PROMPTS[7], {"num_ctx": 8, "num_predict": 4})
            return await others, too_long.value

    others, error = run(scenario())
    assert error.status_code == 400 and "num_ctx" in error.error
    assert others == alone[5:7]


def test_a_long_prompt_arriving_mid_stream_changes_no_reply(server, alone):
    long_prompt = " ".join(f"Item {i} is a kind of fruit." for i in range(250)) + " Which item is last?"

    async def scenario() -> tuple[list[str], float, float, str]:
        async with ollama.AsyncClient(host=server.url) as client:
            gaps: list[float] = []

            async def timed(prompt: str) -> str:
                parts, last = [], None
                async for part in await client.generate(model=MODEL, prompt=prompt, options={"temperature": 0, "num_predict": 48}, stream=True):
                    now = time.monotonic()
                    if last is not None and part.response:
                        gaps.append(now - last)
                    last = now
                    parts.append(part.response)
                return "".join(parts)

            alone_long = [await timed(p) for p in PROMPTS[:3]]
            gaps.clear()
            running = asyncio.gather(*(timed(p) for p in PROMPTS[:3]))
            await asyncio.sleep(1.0)
            sent = time.monotonic()
            long_parts = []
            async for part in await client.generate(model=MODEL, prompt=long_prompt,
                                                    options={"temperature": 0, "num_predict": 8}, stream=True):
                if not long_parts:
                    first_token = time.monotonic() - sent
                long_parts.append(part.response)
            together = await running
            assert together == alone_long
            return together, max(gaps), first_token, "".join(long_parts)

    _, worst_gap, long_prefill, long_reply = run(scenario(), 600)
    assert long_reply
    print(f"worst gap between two tokens while a long prompt was prefilled: {worst_gap * 1000:.0f} ms "
          f"(its first token came after {long_prefill * 1000:.0f} ms)")
    # Chunked prefill: the streams keep moving while the ~2,250-token prompt is read in chunks of at most 256,
    # so no gap comes near the whole prefill (one step holding it would). A ratio measured in one run, because
    # a loaded CI machine stretches both; the 250 ms target is measured by `lljx bench serve` on a quiet machine.
    assert worst_gap < long_prefill / 2


def test_a_disconnect_mid_decode_frees_its_slot_at_once(server, alone):
    async def scenario() -> float:
        async with ollama.AsyncClient(host=server.url) as client:
            stream = await client.generate(model=MODEL, prompt=COUNTING, options={"temperature": 0, "num_predict": 200}, stream=True)
            for _ in range(3):
                assert not (await anext(stream)).done
            assert (await asyncio.to_thread(ps_row, server))["slots_in_use"] == 1
            left = time.monotonic()
            await stream.aclose()
            await wait_until_free(server)
            return time.monotonic() - left

    freed_after = run(scenario())
    assert freed_after < 5
    stopped = re.findall(r"generation stopped \(client disconnected\) after (\d+) tokens", server.log_text())
    assert stopped and 3 <= int(stopped[-1]) < 200


def test_a_disconnect_mid_prefill_frees_its_slot(server, alone):
    long_prompt = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(250))  # ~3,500 tokens
    body = {"model": MODEL, "prompt": long_prompt, "options": {"temperature": 0, "num_predict": 64}}

    async def scenario() -> None:
        async def ask() -> httpx.Response:
            async with httpx.AsyncClient(timeout=60) as http:
                return await http.post(f"{server.url}/api/generate", json=body)

        asking = asyncio.create_task(ask())
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(ps_row, server)).get("slots_in_use", 0) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not asking.done(), asking.result().text
        asking.cancel()  # leaves while its prompt is still being read in: no reply has started
        with pytest.raises(asyncio.CancelledError):
            await asking
        await wait_until_free(server)
        async with ollama.AsyncClient(host=server.url) as client:
            assert await reply(client, PROMPTS[0]) == alone[0]

    run(scenario())
    stopped = re.findall(r"generation stopped \(client disconnected\) after (\d+) tokens", server.log_text())
    assert stopped and int(stopped[-1]) <= 1  # left during its prefill (the cancel may cross its first token)


def test_a_conversations_next_turn_reports_the_prompt_it_took_from_the_cache(server):
    """The next turn's prompt starts with the last one and its reply, whose keys and values the
    server kept: prompt_eval_count is still the whole prompt (as Ollama counts it), and
    prompt_eval_cached_count the positions not computed again (whole 16-position chunks): at
    least the last prompt's, at most with its whole reply (which is copied out of its row once
    the warm-up has compiled that copy)."""
    def chat(messages: list[dict[str, str]]) -> dict[str, Any]:
        body = {"model": MODEL, "messages": messages, "stream": False, "options": GREEDY}
        response = httpx.post(f"{server.url}/api/chat", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    run(wait_until_free(server))
    messages = [{"role": "user", "content": PROMPTS[4]}]
    first = chat(messages)
    messages += [first["message"], {"role": "user", "content": PROMPTS[5]}]
    second = chat(messages)
    assert second["prompt_eval_count"] > first["prompt_eval_count"] + GREEDY["num_predict"]
    cached = second["prompt_eval_cached_count"]
    assert 0 < first["prompt_eval_count"] // 16 * 16 <= cached <= first["prompt_eval_count"] + first["eval_count"]
    assert second["message"]["content"]


def test_sigterm_with_full_slots_ends_every_stream_cleanly(server, alone):
    """The last test here: it stops the module's server."""
    body = {"model": MODEL, "prompt": COUNTING, "options": {"temperature": 0, "num_predict": 400}}

    async def scenario() -> list[list[dict[str, Any]]]:
        received: list[list[dict[str, Any]]] = [[] for _ in range(SLOTS + 2)]

        async def read(i: int) -> None:
            async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", f"{server.url}/api/generate", json=body) as r:
                async for line in r.aiter_lines():
                    received[i].append(json.loads(line))

        readers = asyncio.gather(*(read(i) for i in range(len(received))), return_exceptions=True)
        while sum(bool(lines) for lines in received) < SLOTS:
            await asyncio.sleep(0.05)
        stopped_at = time.monotonic()
        assert await asyncio.to_thread(stop_server, server, signal.SIGTERM) == 0
        outcomes = await readers
        assert time.monotonic() - stopped_at < 30
        assert all(not isinstance(o, Exception) or isinstance(o, httpx.HTTPError) for o in outcomes), outcomes
        return received

    received = run(scenario(), 300)
    streamed = [lines for lines in received if lines]
    assert len(streamed) >= SLOTS
    assert all(not lines[-1].get("done") for lines in streamed)  # cut short, none claims to have finished
    log = server.log_text()
    assert "lljx: stopped" in log and "Traceback" not in log
