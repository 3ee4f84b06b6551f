"""The roofline: cache levels and where a working set lives, the read kernel, the bandwidth cache, bytes per format, the >100% check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lljx import _native
from lljx.bench import bandwidth
from lljx.bench.caches import DRAM, CacheLevel, cache_levels, describe_caches, parse_size, working_set_level
from lljx.bench.roofline import Roofline, describe_formats, file_bytes_per_token, format_bytes, recheck
from lljx.models.gguf_file import read_gguf_header
from lljx.params import GGMLWeight, Int8Weight, LayerParams, Params

MiB = 1 << 20
# Two cores with a private 1 MiB L2 each and one shared 32 MiB L3, as on the machine these figures come from.
TWO_CORES = [CacheLevel("L1d", 48 << 10, 2), CacheLevel("L2", MiB, 2), CacheLevel("L3", 32 * MiB, 1)]


def fake_sysfs(root: Path, cpus: dict[int, list[tuple[int, str, str, str]]]) -> Path:
    for cpu, caches in cpus.items():
        for index, (level, kind, size, shared) in enumerate(caches):
            folder = root / f"cpu{cpu}" / "cache" / f"index{index}"
            folder.mkdir(parents=True)
            for name, value in (("level", str(level)), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
                (folder / name).write_text(value + "\n")
    return root


def test_cache_levels_count_private_caches_once_per_core_and_shared_ones_once(tmp_path):
    def caches(cpu: int) -> list[tuple[int, str, str, str]]:
        return [(1, "Data", "48K", str(cpu)), (1, "Instruction", "32K", str(cpu)), (2, "Unified", "1024K", str(cpu)),
                (3, "Unified", "32768K", "0-1")]

    root = fake_sysfs(tmp_path, {0: caches(0), 1: caches(1)})
    assert cache_levels([0, 1], root) == TWO_CORES
    assert cache_levels([1], root) == [CacheLevel("L1d", 48 << 10, 1), CacheLevel("L2", MiB, 1),
                                       CacheLevel("L3", 32 * MiB, 1)]
    assert describe_caches(TWO_CORES) == "L1d 48 KiB x2, L2 1 MiB x2, L3 32 MiB"
    assert cache_levels([0], tmp_path / "nowhere") == [] and describe_caches([]) == "cache sizes unknown"
    assert parse_size("1024K") == MiB and parse_size("2M") == 2 * MiB and parse_size("4096") == 4096


def test_working_set_level_is_the_smallest_cache_that_holds_it():
    assert working_set_level(1.5 * MiB, TWO_CORES) == "L2"  # two private L2s hold 2 MiB together
    assert working_set_level(2 * MiB + 1, TWO_CORES) == "L3"
    assert working_set_level(32 * MiB, TWO_CORES) == "L3"
    assert working_set_level(135e6, TWO_CORES) == DRAM  # the embedded model at int8 is past this L3
    big_l3 = [CacheLevel("L2", MiB, 2), CacheLevel("L3", 256 * MiB, 1)]
    assert working_set_level(135e6, big_l3) == "L3"  # ...but fits a 256 MiB one
    assert working_set_level(10, []) == DRAM


def test_the_read_kernel_measures_a_positive_rate_and_rejects_nonsense():
    gbs, read, passes = _native.read_bandwidth(1 << 20, 2, seconds=0.01)
    assert gbs > 0 and read >= 1 << 20 and read % 128 == 0 and passes >= 1
    for bad in ((0, 1), (1 << 20, 0)):
        with pytest.raises(ValueError, match="must be positive"):
            _native.read_bandwidth(*bad)
    with pytest.raises(ValueError, match="seconds not negative"):
        _native.read_bandwidth(1 << 20, 1, seconds=-1.0)


def test_the_buffer_is_the_working_set_capped_where_every_size_reads_dram():
    assert bandwidth.buffer_bytes(20e6, TWO_CORES) == 20_000_000
    assert bandwidth.buffer_bytes(16e9, TWO_CORES) == bandwidth.DRAM_CAP_BYTES
    big_l3 = [CacheLevel("L3", 256 * MiB, 1)]
    assert bandwidth.buffer_bytes(16e9, big_l3) == 8 * 256 * MiB  # 8x the last level when that is more
    assert bandwidth.size_class(20_000_000, TWO_CORES) == "L3 <= 32 MiB"
    assert bandwidth.size_class(1_500_000, TWO_CORES) == "L2 <= 2 MiB"
    assert bandwidth.size_class(100_000_000, TWO_CORES) == "DRAM <= 128 MiB"
    assert bandwidth.size_class(bandwidth.DRAM_CAP_BYTES, TWO_CORES) == DRAM


def test_bandwidth_is_measured_once_per_cpu_threads_and_size_class(tmp_path, monkeypatch):
    calls = []

    def fake_measure(nbytes, threads, levels, **kw):
        calls.append(nbytes)
        return bandwidth.Measured(10.0 + len(calls), nbytes, working_set_level(nbytes, levels), threads,
                                  kw.get("seconds", bandwidth.SECONDS), "today", bandwidth.size_class(nbytes, levels))

    monkeypatch.setattr(bandwidth, "measure", fake_measure)
    first = bandwidth.cached("CPU A", 2, 20e6, TWO_CORES, cache=tmp_path)
    assert (first.gbs, first.bytes, first.level) == (11.0, 20_000_000, "L3")
    assert bandwidth.cached("CPU A", 2, 25e6, TWO_CORES, cache=tmp_path) == first  # same class: no new measurement
    assert bandwidth.cached("CPU A", 2, 3e9, TWO_CORES, cache=tmp_path).level == DRAM
    bandwidth.cached("CPU A", 1, 20e6, TWO_CORES, cache=tmp_path)
    bandwidth.cached("CPU B", 2, 20e6, TWO_CORES, cache=tmp_path)
    assert calls == [20_000_000, bandwidth.DRAM_CAP_BYTES, 20_000_000, 20_000_000]
    known = json.loads((tmp_path / bandwidth.BANDWIDTH_FILE).read_text())
    assert len(known) == 4 and known[bandwidth.cache_key("CPU A", 2, "L3 <= 32 MiB")]["gbs"] == 11.0
    # Measuring again keeps the higher figure, and the cache then holds it.
    again = bandwidth.remeasure("CPU A", 2, 20e6, TWO_CORES, first, cache=tmp_path)
    assert again.gbs == 15.0 and bandwidth.cached("CPU A", 2, 20e6, TWO_CORES, cache=tmp_path).gbs == 15.0
    higher = bandwidth.Measured(99.0, 20_000_000, "L3", 2, 1.0, "earlier", "L3 <= 32 MiB")
    assert bandwidth.remeasure("CPU A", 2, 20e6, TWO_CORES, higher, cache=tmp_path).gbs == 99.0
    (tmp_path / bandwidth.BANDWIDTH_FILE).write_text("{not json")  # a broken cache is measured again, not fatal
    assert bandwidth.cached("CPU A", 2, 20e6, TWO_CORES, cache=tmp_path).gbs == 17.0


def summary_of(shares: dict[str, float]):
    """A summarize() for recheck: each system's median is its share of a 100 tok/s bound at 10 GB/s."""
    def summarize(bound: Roofline) -> list[dict]:
        return [{"system": name, "roofline_share": 100 * share / bound.bound_tps} for name, share in shares.items()]
    return summarize


def test_a_system_above_the_roofline_makes_the_bench_measure_again_then_flag_it():
    bound = Roofline("f16", {"F16": 1e8}, kv_bytes=0, context=10, bandwidth_gbs=10.0)  # 100 tok/s
    said: list[str] = []
    measured: list[int] = []

    def again(gbs: float):
        return lambda: measured.append(1) or gbs

    same, summary = recheck(bound, summary_of({"a": 0.8, "b": 0.9}), again(50.0), said.append)
    assert same == bound and not measured and not said and [s["roofline_share"] for s in summary] == [0.8, 0.9]

    fixed, summary = recheck(bound, summary_of({"a": 0.8, "b": 1.2}), again(13.0), said.append)
    assert measured == [1] and fixed.remeasured and fixed.above == () and fixed.bandwidth_gbs == 13.0
    assert max(s["roofline_share"] for s in summary) <= 1.0
    assert "b 120%" in said[0] and "measuring the bandwidth again" in said[0] and len(said) == 1
    assert "measured again" in fixed.describe()

    said.clear()
    flagged, summary = recheck(bound, summary_of({"a": 1.5, "b": 1.2}), again(9.0), said.append)
    assert flagged.bandwidth_gbs == 10.0  # a lower second figure never replaces the first
    assert flagged.above == ("a", "b") and "still above" in said[1]
    assert "still above it: a, b" in flagged.describe() and flagged.as_dict()["above"] == ["a", "b"]


def ggml(qtype: GGMLQuantizationType, n_out: int, n_in: int) -> GGMLWeight:
    block, size = GGML_QUANT_SIZES[qtype]
    # As a view of a mapped file: 32 bytes of the tensor before it, which are not this weight's.
    return GGMLWeight(np.zeros(32 + n_out * (n_in // block * size), np.uint8), int(qtype), n_in, n_out, skip=32)


def test_bytes_per_token_by_format_count_blocks_as_stored_and_one_row_of_an_untied_table():
    q4, q6 = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K
    norm = np.ones(256, np.float32)
    layer = LayerParams(norm, ggml(q4, 256, 256), ggml(q4, 128, 256), ggml(q6, 128, 256), ggml(q4, 256, 256), norm,
                        ggml(q4, 512, 256), ggml(q4, 512, 256), ggml(q6, 256, 512))
    table = ggml(q6, 1000, 256)
    tied = Params(embed=None, layers=(layer,), final_norm=norm, head=table)
    q4_row, q6_row = 144, 210  # bytes of one 256-wide row: one Q4_K block, one Q6_K block
    expected = {"Q6_K": 128 * q6_row + 256 * 2 * q6_row + 1000 * q6_row,
                "Q4_K": (256 + 128 + 256 + 512 + 512) * q4_row, "F32": 3 * 256 * 4}
    assert format_bytes(tied) == expected and list(format_bytes(tied)) == ["Q6_K", "Q4_K", "F32"]
    untied = tied._replace(embed=ggml(q4, 1000, 256))
    assert format_bytes(untied) == {**expected, "Q4_K": expected["Q4_K"] + q4_row}
    int8 = Int8Weight(np.zeros((256, 64), np.int8), np.zeros((8, 64), np.float32))
    dense = Params(embed=np.zeros((10, 256), np.float16), layers=(), final_norm=norm, head=int8)
    assert format_bytes(dense) == {"int8": 256 * 64 + 8 * 64 * 4, "F32": 1024, "F16": 512}
    assert describe_formats({"Q4_K": 560.2e6, "F32": 3e4}) == "Q4_K 560.2 MB + F32 30.0 kB"


def test_bytes_per_token_by_format_from_a_gguf_header(tmp_path):
    from fixtures.random_llama import write_quantized_llama

    from lljx.models.embedded import embedded_gguf_path

    untied = read_gguf_header(write_quantized_llama(tmp_path / "q4k.gguf", GGMLQuantizationType.Q4_K))
    per_token = file_bytes_per_token(untied)
    embd = untied.tensors["token_embd.weight"]
    every = sum(t.n_bytes for t in untied.tensors.values())
    assert sum(per_token.values()) == pytest.approx(every - embd.n_bytes + embd.n_bytes / embd.shape[1])
    assert set(per_token) == {"Q4_K", "F32"}
    tied = read_gguf_header(embedded_gguf_path())  # SmolLM2: the table is the head, read whole
    assert sum(file_bytes_per_token(tied).values()) == sum(t.n_bytes for t in tied.tensors.values())
    assert list(file_bytes_per_token(tied))[:2] == ["Q4_1", "Q8_0"]
