"""The server's model pool without weights: load once, least-recently-used eviction, busy models kept, limits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from lljx.models import ResolvedModel
from lljx.server import pool as pool_module
from lljx.server.pool import ModelPool
from lljx.server.schemas import RequestError


def resolved(name: str) -> ResolvedModel:
    return ResolvedModel(name=name, source=name, format="gguf", path=f"/models/{name}.gguf", origin="file", file_size=1)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for load_resolved and records what was loaded."""
    seen: list[str] = []

    def fake_load(model: ResolvedModel, *, dtype: str) -> SimpleNamespace:
        seen.append(model.name)
        return SimpleNamespace(name=model.name)

    monkeypatch.setattr(pool_module, "load_resolved", fake_load)
    return seen


def run(coroutine):
    return asyncio.run(coroutine)


def make_pool(**limits: int) -> ModelPool:
    return ModelPool(dtype="f32", strategy=SimpleNamespace(name="fake"), **limits)  # type: ignore[arg-type]


def test_a_model_loads_once_and_the_least_recently_used_idle_one_goes(loads):
    async def scenario() -> list[list[str]]:
        pool = make_pool(max_loaded=2)
        snapshots = []
        for name in ("a", "a", "b", "a", "c"):
            loaded, _ = await pool.acquire(resolved(name))
            pool.release(loaded)
            snapshots.append(sorted(m.resolved.name for m in pool.models.values()))
        pool.close()
        return snapshots

    assert run(scenario()) == [["a"], ["a"], ["a", "b"], ["a", "b"], ["a", "c"]]
    assert loads == ["a", "b", "c"]


def test_a_busy_model_is_not_evicted_until_its_requests_end(loads):
    async def scenario() -> tuple[list[str], list[str]]:
        pool = make_pool(max_loaded=1)
        busy, _ = await pool.acquire(resolved("a"))
        other, _ = await pool.acquire(resolved("b"))
        during = sorted(m.resolved.name for m in pool.models.values())
        pool.release(other)  # b is now idle and least recently used... but a is still busy
        pool.release(busy)
        after = sorted(m.resolved.name for m in pool.models.values())
        pool.close()
        return during, after

    during, after = run(scenario())
    assert during == ["a", "b"] and after == ["a"]


def test_concurrent_first_requests_share_one_load(loads):
    async def scenario() -> None:
        pool = make_pool()
        results = await asyncio.gather(*(pool.acquire(resolved("a")) for _ in range(5)))
        assert len({id(loaded) for loaded, _ in results}) == 1 and results[0][0].pending == 5
        pool.close()

    run(scenario())
    assert loads == ["a"]


def test_keep_alive_0_unloads_when_idle_and_the_queue_beyond_the_slots_is_bounded(loads):
    async def scenario() -> None:
        pool = make_pool(max_queue=2)
        first, _ = await pool.acquire(resolved("a"))  # runs (a strategy without slots runs one at a time)
        for _ in range(2):  # wait
            await pool.acquire(resolved("a"))
        with pytest.raises(RequestError) as full:
            await pool.acquire(resolved("a"))
        assert full.value.status == 503
        pool.unload_after(first)
        assert pool.models  # still serving its queue
        for _ in range(3):
            pool.release(first)
        assert not pool.models
        pool.cancel_all("stopping")
        with pytest.raises(RequestError) as closing:
            await pool.acquire(resolved("a"))
        assert closing.value.status == 503

    run(scenario())
