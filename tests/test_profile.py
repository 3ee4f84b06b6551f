"""lljx profile: sample classification, collapsed stacks, portable paths, and real profiles of the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lljx
import pytest
from lljx.profile_report import (
    LIBRARY,
    category_seconds,
    classify,
    collapsed_stacks,
    load_profile,
    portable_frame,
    portable_path,
    summary,
)
from pyinstrument.session import Session


def frame(function: str, path: str, cls: str = "") -> str:
    """A stack entry in pyinstrument's format: function NUL path NUL line, then attributes."""
    return f"{function}\x00{path}\x001" + (f"\x01c{cls}" if cls else "") + "\x01l2"


THREAD = "MainThread\x00<thread>\x000"
ROOT = [THREAD, frame("profile_strategy", "lljx/profile.py"), frame("generate_one", "lljx/profile.py")]
LOOP = [*ROOT, frame("stream_tokens", "lljx/profile.py")]
JAX_CALL = frame("__call__", f"{LIBRARY}/jax/_src/stages.py", "Compiled")


def fake_session(records: list[tuple[list[str], float]]) -> Session:
    return Session(
        frame_records=records, start_time=0.0, duration=sum(t for _, t in records), min_interval=0.001,
        max_interval=0.001, sample_count=len(records), start_call_stack=ROOT[:2], target_description="test",
        cpu_time=0.0, sys_path=[LIBRARY], sys_prefixes=[LIBRARY],
    )


@pytest.mark.parametrize(
    ("stack", "category"),
    [
        ([*LOOP, frame("block_until_ready", "lljx/profile.py", "DeviceTokens")], "device"),
        ([*LOOP, frame("__array__", "lljx/profile.py", "DeviceTokens")], "device"),
        ([*LOOP, frame("decode", "lljx/strategies/compiled.py", "CompiledDecoder"), JAX_CALL], "dispatch"),
        ([*LOOP, frame("cache_miss", f"{LIBRARY}/jax/_src/pjit.py")], "dispatch"),
        # A jitted call has no frame of its own: its time is the strategy frame's own time.
        ([*LOOP, frame("forward", "lljx/strategies/jit_layer.py")], "dispatch"),
        ([*LOOP, frame("decode", "lljx/strategies/eager.py"), frame("sample", "lljx/sampling.py"), JAX_CALL], "sampling"),
        ([*ROOT, frame("chat_prompt_ids", "lljx/generation.py"), frame("encode", "lljx/tokenizer.py")], "tokenize"),
        (LOOP, "tokenize"),  # the Rust token loop's own work: detokenizing, stop checks
        ([*LOOP, frame("append", "<built-in>")], "tokenize"),
        ([*ROOT, frame("__init__", "lljx/generation.py", "Generation")], "python"),
    ],
)
def test_classify(stack, category):
    assert classify(stack) == category


def test_category_seconds_add_up_and_collapsed_stacks_start_at_the_profiler():
    session = fake_session([
        ([*LOOP, frame("block_until_ready", "lljx/profile.py", "DeviceTokens")], 0.030),
        ([*LOOP, frame("decode", "lljx/strategies/compiled.py", "CompiledDecoder"), JAX_CALL], 0.002),
        ([*LOOP, frame("decode", "lljx/strategies/compiled.py", "CompiledDecoder"), JAX_CALL], 0.001),
    ])
    seconds = category_seconds(session)
    assert seconds["device"] == pytest.approx(0.030) and seconds["dispatch"] == pytest.approx(0.003)
    assert sum(seconds.values()) == pytest.approx(0.033)
    lines = collapsed_stacks(session).splitlines()
    loop = "profile_strategy (lljx/profile.py);generate_one (lljx/profile.py);stream_tokens (lljx/profile.py)"
    assert lines == [
        f"{loop};CompiledDecoder.decode (lljx/strategies/compiled.py);Compiled.__call__ (jax/_src/stages.py) 3000",
        f"{loop};DeviceTokens.block_until_ready (lljx/profile.py) 30000",
    ]


def test_portable_paths_name_no_machine_directories():
    import jax

    assert portable_path(str(Path(lljx.__file__).parent / "strategies" / "scan.py")) == "lljx/strategies/scan.py"
    assert portable_path(jax.__file__) == f"{LIBRARY}/jax/__init__.py"
    assert portable_path(os.__file__) == f"{LIBRARY}/os.py"
    assert portable_path("/somewhere/else/script.py") == "script.py"
    assert portable_path("<built-in>") == "<built-in>"
    # namedtuple's eval'd constructor gets a name a flamegraph reader can place.
    assert portable_frame("<lambda>\x00<string>\x001\x01l1").startswith("namedtuple.__new__\x00")


def test_load_rerenders_a_plain_pyinstrument_session_and_opens_it(tmp_path, monkeypatch, capsys):
    import webbrowser

    from lljx.profile_cli import rerender

    saved = tmp_path / "run.pyisession"
    fake_session([([*LOOP, frame("block_until_ready", "lljx/profile.py", "DeviceTokens")], 0.5)]).save(saved)
    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    rerender(saved, tmp_path / "out", open_html=True)
    out = capsys.readouterr().out
    assert out.startswith("run: ") and "waiting for the device" in out and "100.0%" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "run.collapsed.txt", "run.html", "run.pyisession", "run.speedscope.json"
    ]
    assert opened == [(tmp_path / "out" / "run.html").resolve().as_uri()]
    before = saved.read_text()
    rerender(saved, None, open_html=False)  # beside the session, which is left as it was
    assert saved.read_text() == before and (tmp_path / "run.html").exists()


def test_load_rejects_what_is_not_a_session(tmp_path):
    bad = tmp_path / "x.pyisession"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a pyinstrument session"):
        load_profile(bad)
    with pytest.raises(ValueError, match="x.pyisession"):
        load_profile(tmp_path / "missing" / "x.pyisession")


def lljx_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The `lljx` console script's entry point, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-c", "from lljx.cli import entry_point; entry_point()", *args], check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "LLJX_COMPILE_CACHE": "0"},
    )


def assert_one_line_error(run: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert run.returncode != 0 and run.stdout == ""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lljx: error: ") and fragment in lines[0], run.stderr


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    assert_one_line_error(lljx_cli("profile", "--strategy", "nope", "--out", str(tmp_path)), "unknown strategy 'nope'")
    assert_one_line_error(lljx_cli("profile", "--load", str(tmp_path / "none.pyisession")), "none.pyisession")
    assert_one_line_error(lljx_cli("profile", "--prompts", "0"), "--prompts")
    assert not any(tmp_path.iterdir()), "nothing is written on an error"


@pytest.fixture(scope="module")
def embedded():
    from lljx.models import load_model

    return load_model(None, dtype="f32")


@pytest.mark.slow
def test_profile_files_parse_and_summary_names_the_strategys_functions(embedded, tmp_path):
    from lljx.profile import profile_strategy
    from lljx.profile_report import write_profile
    from lljx.strategies import registry

    result = profile_strategy(embedded, registry.load("jit-layer"), ["Why is the sky blue?"], max_tokens=16)
    files = write_profile(result.session, result.meta, tmp_path, "jit-layer")
    assert result.gen_tokens > 0 and result.tokens_per_second > 0
    assert result.meta["compiled_inside_s"] == 0, "all compilation happens before the profile"

    speedscope = json.loads(files["speedscope"].read_text())
    assert {"$schema", "profiles", "shared", "exporter"} <= speedscope.keys()
    assert "speedscope" in speedscope["$schema"] and speedscope["shared"]["frames"]
    assert speedscope["profiles"][0]["type"] == "evented" and speedscope["profiles"][0]["events"]
    html = files["html"].read_text()
    assert "<html" in html.lower() and "stream_tokens" in html and "jit_layer.py" in html
    loaded = Session.load(files["session"])  # pyinstrument's own loader reads the file
    assert loaded.sample_count == result.session.sample_count
    collapsed = files["collapsed"].read_text().splitlines()
    assert collapsed and all(line.rsplit(" ", 1)[1].isdigit() for line in collapsed)
    assert any("forward (lljx/strategies/jit_layer.py)" in line for line in collapsed)

    # The saved session summarises exactly like the fresh one, metadata included.
    session, meta = load_profile(files["session"])
    text = summary(session, meta)
    assert text == summary(result.session, result.meta)
    assert text.startswith("jit-layer: ") and "tok/s during the profile" in text and "from 1 prompts" in text
    assert "forward (lljx/strategies/jit_layer.py)" in text and "EagerDecoder.decode" in text
    for label in ("waiting for the device", "jit dispatch and tracing", "tokenization", "Python overhead"):
        assert label in text
    installed = {str(Path(lljx.__file__).resolve().parent.parent), sys.prefix}
    for path in files.values():
        content = path.read_text()
        assert not any(root in content for root in installed), f"{path.name} names a machine path"


@pytest.mark.slow
def test_cli_profiles_with_a_jax_trace_and_reloads(tmp_path):
    run = lljx_cli("profile", "-s", "scan", "--prompts", "1", "-n", "16", "--dtype", "f32",
                   "--jax-trace", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("scan: ") and "waiting for the device" in run.stdout
    names = {p.name for p in tmp_path.iterdir()}
    assert {"scan.html", "scan.speedscope.json", "scan.pyisession", "scan.collapsed.txt", "scan.jax-trace"} <= names
    traces = list((tmp_path / "scan.jax-trace").rglob("*"))
    assert any(p.name.startswith("perfetto_trace") and p.stat().st_size > 0 for p in traces)

    again = tmp_path / "again"
    run = lljx_cli("profile", "--load", str(tmp_path / "scan.pyisession"), "--out", str(again))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("scan: ") and "from 1 prompts" in run.stdout
    assert {p.name for p in again.iterdir()} == {
        "scan.html", "scan.speedscope.json", "scan.pyisession", "scan.collapsed.txt"
    }
